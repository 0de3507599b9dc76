"""Promote a registered version to champion by hand (the same as `mixllm promote`), as a Prefect flow.

Useful from the Prefect UI ("Run" on the ``promote`` deployment): who and why are recorded in the version's tags,
then the version is shipped by the delivery subflow (package, reload the service at ``MIXLLM_PIPELINE_SERVICE_URL``,
smoke test; champion moves back if that fails).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from mixllm.config import get_settings
from mixllm.registry import Registry

from .common import IO_RETRY
from .delivery import deliver


@task(name="move-champion", **IO_RETRY)
def move_champion(version: str, reason: str, who: str) -> str:
    reg = Registry(get_settings())
    reg.promote(version, reason=reason, who=who)
    return reg.resolve(version)


@flow(name="mixllm-promote", flow_run_name="promote-v{version}", log_prints=True)
def promote(version: str, reason: str = "manual promotion", who: str = "prefect") -> dict[str, Any]:
    """Make `version` champion, then deliver it; roll back if its deploy or smoke test fails."""
    version = move_champion(version, reason, who)
    return {"promoted": version, **deliver(version)}
