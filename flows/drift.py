"""The drift monitor flow: the last window of logged traffic vs the champion's training rows; a crossed threshold
starts the nightly deployment at once, with the reasons.

A thin Prefect composition of `mixllm.drift`: read the champion and the store (retried I/O), run the checks, write
the report (HTML, PNG, JSON) and log it as an MLflow monitoring run, then, if it drifted, `run_deployment` the
nightly deployment without waiting (`timeout=0`: the nightly run is its own flow run, on its own worker, with the
reasons in its tags). Scheduled every few hours by the `drift` deployment in prefect.yaml. Without a deployment to
trigger (the embedded single-machine setup) the flow says so and records the reasons only.

Run once:  python -m mixllm_flows.drift [--config drift.yaml] [--trigger mixllm-nightly/nightly]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from mixllm import drift as D
from mixllm.config import get_settings
from mixllm.exceptions import MixLLMError

from .common import COMPUTE, IO_RETRY

NIGHTLY_DEPLOYMENT = "mixllm-nightly/nightly"


@task(name="load-champion", **IO_RETRY)
def load_champion(settings: Any) -> Any:
    from mixllm.registry import CHAMPION, Registry

    reg = Registry(settings)
    version = reg.version_for(CHAMPION)
    if version is None:
        raise MixLLMError("no champion is registered yet: run the nightly pipeline once first")
    return reg.load_router(version)


@task(name="read-store", **IO_RETRY)
def read_store(settings: Any) -> tuple[Any, Any]:
    from mixllm.store import Store

    store = Store(settings.store_url)
    try:
        return store.logs(), store.feedback()
    finally:
        store.dispose()


@task(name="read-held-out", **IO_RETRY)
def read_held_out(pipeline_config: str | None) -> Any:
    """The nightly's held-out slice, the calibration check's baseline (None, with a warning, when none is set)."""
    rows = D.held_out_slice(pipeline_config)
    if rows is None:
        get_run_logger().warning("drift: no held-out files configured: calibration is compared with zero")
    return rows


@task(name="drift-checks", **COMPUTE)
def checks(router: Any, logs: Any, feedback: Any, config: D.DriftConfig, wtp: float, now: datetime,
           held_out: Any = None) -> D.DriftReport:
    reference, window, start, end = D.split_window(logs, router.manifest.get("data_until"), config, now)
    return D.monitor(router, reference, window, config, wtp, feedback, start, end, held_out)


@task(name="log-drift-report", **IO_RETRY)
def log_report(report: D.DriftReport, settings: Any, out_dir: Path | None) -> dict[str, Any]:
    from mixllm.registry import Registry

    with tempfile.TemporaryDirectory(prefix="mixllm-drift-") as tmp:  # MLflow keeps the copies; nothing left behind
        files = D.write_report(report, out_dir or Path(tmp))
        run_id = Registry(settings).log_monitoring_run(
            "drift", report.metrics(), {"router_version": report.router_version,
                                        "window_start": report.window_start, "window_end": report.window_end},
            list(files.values()), {"drifted": report.drifted, "reasons": "; ".join(report.reasons) or "none"})
    return {"run_id": run_id, **({k: str(v) for k, v in files.items()} if out_dir else {})}


@task(name="trigger-nightly", **IO_RETRY)
def trigger(deployment: str, reasons: list[str]) -> str:
    """Start the nightly deployment now (not waiting for it); returns the new flow run's id."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, timeout=0, tags=["drift-triggered"],
                         flow_run_name=f"nightly-drift-{datetime.now(timezone.utc):%Y%m%d-%H%M}")
    get_run_logger().info("drift: started %s (flow run %s) because %s", deployment, run.id, "; ".join(reasons))
    return str(run.id)


@flow(name="mixllm-drift", log_prints=True)
def drift_monitor(config_path: str | None = None, deployment: str | None = None,
                  report_dir: str | None = None, now: str | None = None,
                  pipeline_config: str | None = None) -> dict[str, Any]:
    """Check the last window of traffic; trigger `deployment` (e.g. mixllm-nightly/nightly) when it drifted.
    `pipeline_config`: the nightly's config file, for its held-out slice (default: environment / packaged)."""
    logger = get_run_logger()
    settings = get_settings()
    config = D.load_drift_config(config_path)
    when = datetime.fromisoformat(now) if now else datetime.now(timezone.utc)
    router = load_champion(settings)
    logs, feedback = read_store(settings)
    report = checks(router, logs, feedback, config, settings.default_willingness_to_pay, when,
                    read_held_out(pipeline_config))
    logged = log_report(report, settings, Path(report_dir) if report_dir else None)
    out = {"drifted": report.drifted, "decided": report.decided, "reasons": report.reasons, "note": report.note,
           "router_version": report.router_version, "metrics": report.metrics(), **logged, "triggered": None}
    if not report.drifted:
        logger.info("drift: %s", "no drift" if report.decided else report.note)
    elif deployment:
        out["triggered"] = trigger(deployment, report.reasons)
    else:
        logger.warning("drift: %s; no deployment to trigger (pass deployment=%s): recorded only",
                       "; ".join(report.reasons), NIGHTLY_DEPLOYMENT)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="drift thresholds YAML (default: the packaged defaults/drift.yaml)")
    parser.add_argument("--trigger", help=f"deployment to start on drift, e.g. {NIGHTLY_DEPLOYMENT}")
    parser.add_argument("--report-dir", help="also keep the report files here")
    args = parser.parse_args(argv)
    result = drift_monitor(args.config, args.trigger, args.report_dir)
    print({k: v for k, v in result.items() if k != "metrics"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
