"""Roll the champion back by hand (the same as `mixllm rollback`), as a Prefect flow.

``to=None`` restores the champion before the current one; who and why are recorded in the version tags, then the
restored version is shipped by the delivery subflow (package, reload the service at
``MIXLLM_PIPELINE_SERVICE_URL``, smoke test), which reports a failure instead of moving champion again.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from mixllm.config import get_settings
from mixllm.registry import Registry

from .common import IO_RETRY
from .delivery import champion_version, deliver


@task(name="move-champion-back", **IO_RETRY)
def move_back(to: str | None, reason: str, who: str) -> str:
    return Registry(get_settings()).rollback(to, reason=reason, who=who)


@flow(name="mixllm-rollback", log_prints=True)
def rollback(to: str | None = None, reason: str = "manual rollback", who: str = "prefect") -> dict[str, Any]:
    """Move ``champion`` back, then deliver the restored version (failures reported, not rolled back again)."""
    before = champion_version(get_settings())
    target = move_back(to, reason, who)
    get_run_logger().info(f"champion: version {before} -> {target} ({reason}, by {who})")
    return {"champion_before": before, **deliver(target, on_failure="report")}
