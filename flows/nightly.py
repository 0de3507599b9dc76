"""The nightly flow: new data in, a gated, registered and promoted router out, shipped by the delivery subflow.

A thin Prefect composition of `mixllm.pipeline` stages. Retries with backoff only on I/O tasks (landing files, the
store, the registry; delivery in `delivery.py`); training and evaluation are deterministic, so a retry would only
repeat a failure. The flow run is renamed ``nightly-<UTC date>-<snapshot digest>`` once the snapshot is known. The
candidate is built in a temporary folder that is removed when the run ends (the registry keeps its own copy).

Run once (ephemeral Prefect API, no server needed):  python -m mixllm_flows.nightly [--config pipeline.yaml]
(`mixllm pipeline run` does exactly this, from any folder.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.runtime import flow_run

from mixllm import pipeline as P
from mixllm.config import get_settings
from mixllm.exceptions import MixLLMError
from mixllm.ope import production_metrics
from mixllm.timing import StageClock

from .common import COMPUTE, IO_RETRY, task_runner
from .delivery import champion_version, deliver
from .train import evaluate_champion, evaluate_router, train_and_evaluate


def _run_name() -> str:
    return f"nightly-{datetime.now(timezone.utc):%Y%m%d-%H%M}"


def _rename_run(name: str) -> None:
    """Put the data digest in the run's name (it is only known after the snapshot)."""
    from prefect.client.orchestration import get_client

    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)


check_landing = task(P.check_landing, name="check-landing-contract", task_run_name="check-{path.name}", **IO_RETRY)
ingest = task(P.ingest, name="ingest", **IO_RETRY)
snapshot = task(P.snapshot, name="snapshot", **IO_RETRY)
held_out = task(P.held_out, name="held-out-slice", **IO_RETRY)
champion_dir = task(P.champion_dir, name="fetch-champion", **IO_RETRY)
gate = task(P.gate, name="gate", **COMPUTE)
register = task(P.register, name="register", **IO_RETRY)
promote = task(P.promote, name="promote", **IO_RETRY)
log_timings = task(P.log_timings, name="log-stage-timings", **IO_RETRY)
cache_evaluation = task(P.store_evaluation, name="cache-evaluation", **IO_RETRY)
production_ope = task(production_metrics, name="off-policy-evaluation", **COMPUTE)
add_newcomers = task(P.add_newcomers, name="add-newcomers-to-champion", **COMPUTE)


def _add_and_evaluate(train: Any, test: Any, config: P.PipelineConfig, settings: Any, champ_dir: Path,
                      champ_version: str | None, out_dir: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The champion plus the catalogue's newcomers (on probation), evaluated beside the champion on the same
    held-out slice: the same result as `train_and_evaluate`, without retraining anything else."""
    clock = StageClock()
    with clock.time("predictors"):
        cand_dir = add_newcomers(champ_dir, train, names, config, settings, out_dir)
    with clock.time("evaluation"):
        report, metrics = evaluate_router("candidate", cand_dir, test, config, settings, train)
        champion_metrics, cached = evaluate_champion("champion", champ_dir, champ_version, test, config, settings)
    return {"candidate_dir": cand_dir, "report": report, "metrics": metrics, "champion_metrics": champion_metrics,
            "champion_cached": cached, "timings": clock.seconds}


def _land(config: P.PipelineConfig, settings: Any) -> list[dict[str, Any]]:
    """Contract checks of every landing file (stop before anything is written), then ingest."""
    log = get_run_logger()
    landing = config.resolved_landing()
    checks = check_landing.map(landing, config=unmapped(config))
    fb_checks = [check_landing(p, config, kind="feedback") for p in config.feedback_landing]
    log_checks = checks.result()
    for c in [*log_checks, *fb_checks]:
        log.info(f"contract ok: {c.path}: {c.accepted}/{c.rows} accepted, {c.quarantined} to quarantine {c.reasons}"
                 + (f"; extra columns kept as metadata {list(c.extra_columns)}" if c.extra_columns else ""))
    ingested = ingest(landing, settings, checks=log_checks)  # each file validated once: by its landing check
    if config.feedback_landing:
        ingested += ingest(config.feedback_landing, settings, kind="feedback", checks=fb_checks)
    return ingested


@flow(name="mixllm-nightly", flow_run_name=_run_name, log_prints=True)
def nightly(config_path: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ingest -> validate -> snapshot -> train -> evaluate vs champion -> gate -> register -> promote -> deliver.

    The result's ``timings`` maps each stage (ingest, snapshot, encode, representation, predictors, evaluation,
    registry, package, and total) to wall seconds; they are also logged on the version's MLflow run."""
    log = get_run_logger()
    clock, started = StageClock(), time.perf_counter()
    settings = get_settings()
    config = P.load_pipeline_config(config_path, **(overrides or {}))
    out: dict[str, Any] = {"promoted": False}
    with clock.time("ingest"):
        out["ingested"] = _land(config, settings)
    with clock.time("snapshot"):
        train, digest = snapshot(settings, config)
        test = held_out(config)
    run_name = f"nightly-{datetime.now(timezone.utc):%Y%m%d-%H%M}-{digest[:10]}"
    _rename_run(run_name)
    out["snapshot_digest"] = digest
    out["snapshot_read"] = read = train.attrs.get(P.SNAPSHOT_READ_ATTR, {})
    log.info(f"snapshot {digest[:12]}: {len(train)} rows, {train['query_id'].nunique()} queries; log rows: "
             f"{read.get('reused', 0)} from the previous snapshot, {read.get('read', '?')} read "
             f"({read.get('reason')})")
    with clock.time("registry"):
        champ_version = champion_version(settings)
    # A cluster at an address sees this machine's files only through a shared folder: build in the mixllm home.
    with tempfile.TemporaryDirectory(prefix="mixllm-candidate-",
                                     dir=settings.ensure_home() if config.dask_address else None) as work:
        with clock.time("registry"):
            champ_dir = champion_dir(settings, champ_version) if champ_version else None
        added = P.newcomers(train, champ_dir, settings) if config.add_newcomers else ()
        if added:  # the catalogue gained LLMs: the candidate is the champion plus them, on probation
            log.info(f"newcomers {list(added)}: candidate = champion {champ_version} + them (on probation, "
                     f"graduating at {config.graduation_labels} labelled decisions); no other LLM retrained")
            trained = _add_and_evaluate(train, test, config, settings, champ_dir, champ_version,
                                        Path(work) / "candidate", added)
        else:
            config = P.with_probation(config, champ_dir, train)
            trained = train_and_evaluate.with_options(task_runner=task_runner(config))(
                train, test, config, settings, champ_dir, Path(work) / "candidate", champ_version)
        out["newcomers"] = list(added)
        out["probation"] = P.probation_of(trained["candidate_dir"])
        clock.merge(trained["timings"])
        if champ_version:
            log.info(f"champion {champ_version}: metrics " + ("from the evaluation cache (same version, held-out "
                                                               "rows and settings)" if trained["champion_cached"]
                                                               else "evaluated now (and cached)"))
        with clock.time("evaluation"):
            # Both routers on the service's own labelled logged decisions too (ope/* metrics: gate, MLflow).
            cand_metrics = {**trained["metrics"], **production_ope(settings, trained["candidate_dir"], champ_dir,
                                                                   config.ope, config.feedback)}
            verdict = gate(cand_metrics, trained["champion_metrics"], config)
        with clock.time("registry"):
            version = register(trained["candidate_dir"], trained["report"], cand_metrics, digest, train, config,
                               settings, verdict, champ_version, run_name, trained["champion_metrics"],
                               extra_tags=P.candidate_tags(added, out["probation"], champ_version))
            # its own figures on this held-out slice: the night it is the champion does not evaluate it again
            cache_evaluation(settings, version, P.held_out_digest(test), config, trained["metrics"])
    out.update(version=version, gate_passed=verdict.passed, gate_reason=verdict.reason, champion_before=champ_version,
               champion_evaluation=None if not champ_version else "cached" if trained["champion_cached"] else "evaluated")
    for c in verdict.checks:
        log.info(f"gate {'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}")
    if not verdict.passed:
        out.update(message=f"version {version} registered, not promoted: {verdict.reason}", champion=champ_version)
        log.warning(out["message"])
        return _with_timings(out, clock, started, settings)
    with clock.time("registry"):
        out["message"] = promote(version, verdict, settings)
    log.info(out["message"])
    with clock.time("package"):
        shipped = deliver(version, config)
    out.update(shipped, promoted=shipped["delivered"])
    return _with_timings(out, clock, started, settings)


def _with_timings(out: dict[str, Any], clock: StageClock, started: float, settings: Any) -> dict[str, Any]:
    """The run's stage seconds (plus ``total``) in the result and on the version's MLflow run."""
    out["timings"] = {**clock.seconds, "total": time.perf_counter() - started}
    get_run_logger().info("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in out["timings"].items()))
    log_timings(out["version"], out["timings"], settings)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (used by `mixllm pipeline run`): run once, print the outcome and the versions."""
    parser = argparse.ArgumentParser(prog="python -m mixllm_flows.nightly", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="pipeline YAML (PipelineConfig fields); env MIXLLM_PIPELINE_* also apply")
    args = parser.parse_args(argv)
    try:
        out = nightly(config_path=args.config)
    except MixLLMError as e:
        print(f"\npipeline stopped: {e}\nchampion untouched.", file=sys.stderr)
        return 2
    print("\n" + "=" * 100)
    print(out.get("message", ""))
    for key in ("package", "deploy", "smoke", "rollback", "redeploy"):
        if key in out:
            print(f"{key}: {out[key]}")
    print(f"snapshot digest: {out.get('snapshot_digest')}")
    print(P.versions_table(get_settings()))
    return 0


if __name__ == "__main__":
    from mixllm.telemetry import go_offline

    go_offline()
    sys.exit(main())
