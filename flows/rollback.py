"""Roll the champion back by hand (the same as `mixllm rollback`), as a Prefect flow.

``to=None`` restores the champion before the current one; who and why are recorded in the version tags, then the
running service (``MIXLLM_PIPELINE_SERVICE_URL``) is told to reload and smoke-tested.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import IO_RETRY
from mixllm import pipeline as P
from mixllm.config import get_settings
from mixllm.registry import Registry



@task(name="move-champion-back", **IO_RETRY)
def move_back(to: str | None, reason: str, who: str) -> str:
    return Registry(get_settings()).rollback(to, reason=reason, who=who)


@flow(name="mixllm-rollback", log_prints=True)
def rollback(to: str | None = None, reason: str = "manual rollback", who: str = "prefect") -> dict[str, Any]:
    """Move ``champion`` back, then reload the running service and smoke-test the restored version."""
    log = get_run_logger()
    settings, config = get_settings(), P.load_pipeline_config()
    before = Registry(settings).version_for("champion")
    target = move_back(to, reason, who)
    log.info(f"champion: version {before} -> {target} ({reason}, by {who})")
    out: dict[str, Any] = {"champion_before": before, "champion": target}
    for stage, fn in (("deploy", P.deploy), ("smoke", P.smoke_test)):
        result = task(fn, name=stage, cache_policy=NO_CACHE)(target, settings, config)
        out[stage] = result.message
        log.info(f"{stage}: {result.message}")
    return out
