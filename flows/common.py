"""Task options shared by the flows: retries with backoff on I/O only, never on a deterministic refusal."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

from mixllm.exceptions import MixLLMError, RegistryError, StoreError


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry I/O failures (store, registry, network, files), not a contract or config
    that says no, which would fail the same way three more times and only delay the clear message."""
    try:
        state.result(raise_on_failure=True)
    except (StoreError, RegistryError):
        return True
    except MixLLMError:
        return False
    except BaseException:  # noqa: BLE001 - OSError, httpx/MLflow/database errors: worth another try
        return True
    return True


IO_RETRY: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_condition_fn": transient,
                            "cache_policy": NO_CACHE}
COMPUTE: dict[str, Any] = {"retries": 0, "cache_policy": NO_CACHE}
