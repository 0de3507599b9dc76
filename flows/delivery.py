"""Delivery as one subflow: package -> deploy -> smoke test -> roll back when the deploy or smoke test fails.

The nightly, promote and rollback flows all ship a version through `deliver`, so there is one path and one retry
policy (`IO_RETRY`: every stage is I/O - a bentoml build, HTTP to the service, registry reads and writes). A stage
that says no returns a failed `StageResult` instead of raising, so only I/O errors are retried.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task

from mixllm import delivery as D
from mixllm import pipeline as P
from mixllm.config import get_settings

from .common import IO_RETRY

package = task(D.package, name="package-bento", task_run_name="package-v{version}", **IO_RETRY)
deploy = task(D.deploy, name="deploy", task_run_name="deploy-v{version}", **IO_RETRY)
smoke_test = task(D.smoke_test, name="smoke-test", task_run_name="smoke-v{version}", **IO_RETRY)
rollback = task(D.rollback_after_failure, name="rollback", **IO_RETRY)
champion_version = task(P.champion_version, name="read-champion", **IO_RETRY)


@flow(name="mixllm-deliver", flow_run_name="deliver-v{version}", log_prints=True)
def deliver(version: str, config: P.PipelineConfig | None = None,
            on_failure: Literal["rollback", "report"] = "rollback") -> dict[str, Any]:
    """Ship `version` (already champion): build its Bento, make the service serve it, smoke-test it.

    ``on_failure="rollback"`` (nightly, promote): a failed deploy or smoke test moves champion back to the one
    before and redeploys that. ``"report"`` (the rollback flow): only say so, since undoing a rollback would restore
    the version a person has just taken out. A failed package is reported, never rolled back: the service does not
    need the Bento to serve the version.
    """
    log = get_run_logger()
    settings, config = get_settings(), config or P.load_pipeline_config()
    built = package(version, settings, config)
    (log.info if built.ok else log.warning)(f"package: {built.message}")
    out: dict[str, Any] = {"package": built.message, "delivered": True}
    for stage, step in (("deploy", deploy), ("smoke", smoke_test)):
        result = step(version, settings, config)
        out[stage] = result.message
        (log.info if result.ok else log.warning)(f"{stage}: {result.message}")
        if not result.ok:
            out["delivered"] = False
            if on_failure == "rollback":
                out["rollback"] = rollback(version, f"{stage} failed: {result.message}", settings)
                log.error(out["rollback"])
                restored = champion_version(settings)
                if config.service_url and restored and restored != version:
                    out["redeploy"] = deploy(restored, settings, config).message
            break
    out["champion"] = champion_version(settings)
    return out
