"""The canary flow: the challenger's verdict on the live feedback since its canary started, applied.

A thin Prefect composition of `mixllm.canary`, run every few minutes by the `canary` deployment (prefect.yaml),
against the store and the registry, never in the request path: read the aliases and the labelled decisions of each
arm (retried I/O), run the always-valid sequential test, tag the challenger's version with the verdict and its
evidence, then act: promote (and ship it through the delivery subflow, as `promote` does), or remove the
`challenger` alias on rollback or expiry (the service stops routing sessions to it at its next poll), or nothing
while undecided. Each run with a challenger is also an MLflow monitoring run (kind ``canary``).

Run once:  python -m mixllm_flows.canary [--dry-run]
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task

from mixllm import canary as C
from mixllm.config import get_settings

from .common import COMPUTE, IO_RETRY
from .delivery import deliver


@task(name="canary-verdict", **IO_RETRY)
def verdict(config: C.CanaryConfig, now: datetime | None = None) -> C.CanaryDecision:
    from mixllm.registry import Registry
    from mixllm.store import Store

    settings = get_settings()
    store = Store(settings.store_url)
    try:
        return C.evaluate(Registry(settings), store, config, settings.default_willingness_to_pay, now)
    finally:
        store.dispose()


@task(name="apply-verdict", **IO_RETRY)
def apply_verdict(decision: C.CanaryDecision) -> str | None:
    """Tag, then promote or stop the canary; returns the MLflow run id of the evidence."""
    import json
    import tempfile
    from pathlib import Path

    from mixllm.registry import Registry

    reg = Registry(get_settings())
    C.apply(reg, decision, who="prefect:mixllm-canary")
    with tempfile.TemporaryDirectory(prefix="mixllm-canary-") as tmp:
        path = Path(tmp) / "canary.json"
        path.write_text(json.dumps(decision.evidence(), indent=1, default=str), encoding="utf-8")
        return reg.log_monitoring_run("canary", decision.metrics(), {
            "champion_version": decision.champion_version, "challenger_version": decision.challenger_version},
            [path], {"verdict": decision.verdict, "reason": decision.reason})


@task(name="canary-config", **COMPUTE)
def config_of(overrides: dict[str, Any]) -> C.CanaryConfig:
    return C.CanaryConfig(**overrides)


@flow(name="mixllm-canary", log_prints=True)
def canary(alpha: float = 0.025, rollback_alpha: float = 0.20, min_labels: int = 30, max_hours: float = 72.0,
           exposure_budget: float | None = 0.02, budget_margin: float = 0.05, budget_alpha: float = 0.20,
           check_minutes: float = 15.0, budget_look_share: float = 0.8, dry_run: bool = False, deliver_promoted: bool = True,
           now: datetime | None = None) -> dict[str, Any]:
    """Decide the running canary: promote (then deliver, unless `deliver_promoted` is off: the service still
    follows the champion alias at its next poll), roll back (worse, or its exposure budget spent before it was
    shown not worse), expire, or extend (tagging the challenger cleared when it passes the budget look, so the
    service may raise its share). `check_minutes` is the deployment's schedule. `now`: decide as of this time
    (a replay or a simulation whose day runs faster than the clock, bench/loop_canary.py); default the clock."""
    logger = get_run_logger()
    cfg = config_of({"alpha": alpha, "rollback_alpha": rollback_alpha, "min_labels": min_labels,
                     "max_hours": max_hours, "exposure_budget": exposure_budget, "budget_margin": budget_margin,
                     "budget_alpha": budget_alpha, "check_minutes": check_minutes,
                     "budget_look_share": budget_look_share})
    decision = verdict(cfg, now)
    out: dict[str, Any] = {"verdict": decision.verdict, "reason": decision.reason, "cleared": decision.cleared,
                           "challenger_version": decision.challenger_version, "metrics": decision.metrics()}
    logger.info("canary: %s (%s)", decision.verdict, decision.reason)
    if decision.verdict == "idle" or dry_run:
        return out
    out["run_id"] = apply_verdict(decision)
    if decision.verdict == "promote" and deliver_promoted:
        out["delivery"] = deliver(decision.challenger_version)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="decide only: no tag, alias move or delivery")
    args = parser.parse_args(argv)
    result = canary(dry_run=args.dry_run)
    print({k: v for k, v in result.items() if k != "metrics"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
