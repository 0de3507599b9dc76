"""Task options shared by the flows: retries with backoff on I/O only, never on a deterministic refusal; the task
runner the pipeline config names."""

from __future__ import annotations

import os
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from mixllm.exceptions import MixLLMError, RegistryError, StoreError
from mixllm.pipeline import PipelineConfig
from mixllm.telemetry import OFFLINE_ENV


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


def task_runner(config: PipelineConfig) -> TaskRunner:
    """The task runner `config.runner` names: Prefect's thread pool, or Dask (a scheduler at `dask_address`, else a
    LocalCluster of `dask_workers` processes created for the run and closed when it ends).

    The LocalCluster's workers get one thread each (LightGBM and torch run single-threaded per task; Dask also
    sets OMP/MKL/OPENBLAS_NUM_THREADS=1 in them), no dashboard port, and the offline switches: a worker process
    must never download a model or phone home."""
    if config.runner == "thread":
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    offline = {key: os.environ.get(key, value) for key, value in OFFLINE_ENV.items()}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": config.dask_workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": None, "env": offline})
