"""The nightly flow's fan-out on Dask (prefect-dask, a real 2-process LocalCluster) gives what the thread pool gives.

Both runners run the nightly's own `train_and_evaluate` subflow on the same small snapshot: the per-LLM predictors
and the evaluations go to worker processes on Dask. The Dask run also evaluates the thread run's candidate as its
champion, so both evaluation tasks cross a process boundary. Asserted equal: the saved predictors' predictions,
the decisions at several willingness-to-pay values, and every evaluation metric. The cluster must be gone after
the run (no worker process left behind).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from mixllm.config import get_settings
from mixllm.pipeline import held_out, load_pipeline_config, router_metrics, sample_data, subsample

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL: dict[str, Any] = {
    "max_train_queries_per_task": 12,
    "max_test_queries_per_task": 8,
    "baselines": ("single", "random"),
    "router": {"epochs": 0, "progress": False, "predictor": {"n_estimators": 20, "min_child_samples": 5}},
}


class ChildWatch:
    """The most descendant processes seen while the block runs (sampled every 0.2 s)."""

    def __init__(self) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            self.most = max(self.most, len(_descendants()))

    def __enter__(self) -> "ChildWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _descendants() -> list[psutil.Process]:
    """Child processes, except multiprocessing's resource tracker (one per parent, started by the first spawned
    process and kept for the parent's lifetime: it is not the cluster's)."""
    return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


def _run(config: Any, train: Any, test: Any, out: Path, champion: Path | None = None) -> dict[str, Any]:
    from mixllm_flows.common import task_runner
    from mixllm_flows.train import train_and_evaluate

    flow = train_and_evaluate.with_options(task_runner=task_runner(config))
    return flow(train, test, config, get_settings(), champion, out)


def _same(a: dict[str, float], b: dict[str, float]) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if not (k in a and k in b and (a[k] == b[k] or
                                                                              (math.isnan(a[k]) and math.isnan(b[k]))))]


def test_dask_fanout_trains_and_evaluates_exactly_like_the_thread_pool(tmp_path: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from mixllm.data import load_training_log
    from mixllm.routers.registry import load_router

    thread_cfg = load_pipeline_config(**SMALL)
    dask_cfg = load_pipeline_config(**SMALL, runner="dask", dask_workers=2)
    train = subsample(load_training_log(sorted(sample_data().glob("*_train.csv*"))), 12, seed=0)
    test = held_out(thread_cfg)
    before = len(_descendants())
    with prefect_test_harness(server_startup_timeout=120):
        base = _run(thread_cfg, train, test, tmp_path / "thread")
        with ChildWatch() as watch:
            dist = _run(dask_cfg, train, test, tmp_path / "dask", champion=base["candidate_dir"])
    assert watch.most >= before + 2, f"no Dask worker processes seen ({watch.most} descendants, {before} before)"
    left = _descendants()
    assert len(left) <= before, f"the LocalCluster left processes behind: {[p.cmdline() for p in left]}"
    assert set(base["timings"]) == set(dist["timings"]) == {"encode", "representation", "predictors", "evaluation"}

    a, b = load_router(base["candidate_dir"]), load_router(dist["candidate_dir"])
    assert a.models == b.models and len(a.models) == 11
    prompts = test.drop_duplicates("query_id")["prompt"].tolist()
    pa, pb = a.predict(prompts), b.predict(prompts)
    for field in ("quality", "cost"):
        np.testing.assert_array_equal(getattr(pa, field), getattr(pb, field), err_msg=field)
    for wtp in (1.0, 100.0, 1000.0, 1e5):
        decided = [[(d.model, d.candidates) for d in r.route(prompts, wtp)] for r in (a, b)]
        assert decided[0] == decided[1], wtp
    assert _same(base["metrics"], dist["metrics"]) == [], "candidate metrics differ between runners"
    # the champion's evaluation is the router's own figures (no baselines: the gates read them from the candidate)
    assert _same(router_metrics(base["metrics"]), dist["champion_metrics"]) == [], \
        "the same router evaluated on Dask differs"
    assert dist["champion_cached"] is False  # no version given: evaluated, not read from the evaluation cache
