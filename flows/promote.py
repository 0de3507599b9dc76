"""Promote a registered version to champion by hand (the same as `mixllm promote`), as a Prefect flow.

Useful from the Prefect UI ("Run" on the ``promote`` deployment): who and why are recorded in the version's tags,
then the running service (``MIXLLM_PIPELINE_SERVICE_URL``) is told to reload and smoke-tested.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import IO_RETRY
from mixllm import pipeline as P
from mixllm.config import get_settings
from mixllm.registry import Registry



@task(name="move-champion", **IO_RETRY)
def move_champion(version: str, reason: str, who: str) -> str:
    reg = Registry(get_settings())
    reg.promote(version, reason=reason, who=who)
    return reg.resolve(version)


@flow(name="mixllm-promote", flow_run_name="promote-v{version}", log_prints=True)
def promote(version: str, reason: str = "manual promotion", who: str = "prefect") -> dict[str, Any]:
    """Make `version` champion, reload the service and smoke-test it; roll back if the smoke test fails."""
    log = get_run_logger()
    settings, config = get_settings(), P.load_pipeline_config()
    version = move_champion(version, reason, who)
    out: dict[str, Any] = {"champion": version}
    for stage, fn in (("deploy", P.deploy), ("smoke", P.smoke_test)):
        result = task(fn, name=stage, cache_policy=NO_CACHE)(version, settings, config)
        out[stage] = result.message
        log.info(f"{stage}: {result.message}")
        if not result.ok:
            out["rollback"] = P.rollback_after_failure(version, f"{stage} failed: {result.message}", settings)
            log.error(out["rollback"])
            out["champion"] = Registry(settings).version_for("champion")
            break
    return out
