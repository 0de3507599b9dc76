"""Former home of the baselines and replays, kept while `mixllm.pipeline`, `bench/tune.py` and `bench/loop.py` still
import from here. The baselines are routers in `mixllm.routers.baselines`; the replays live in `mixllm.replay`;
`Predictions.take` slices predictions. Import from there; remove this module once nothing imports it."""

from __future__ import annotations

from typing import Any

import numpy as np

from mixllm.replay import LatencyConfig, OnlineConfig, Sweep, router_sweep  # noqa: F401
from mixllm.routers.baselines import LAMBDA_GRID, TaskPriorRouter
from mixllm.testset import TestSet


def task_prior(train: TestSet, test: TestSet) -> Sweep:
    """`TaskPriorRouter` fitted on `train`, swept on `test`."""
    router = TaskPriorRouter().fit(train)
    return router_sweep("task_prior", router, test, LAMBDA_GRID, note=router.note)


def slice_predictions(pred: Any, rows: np.ndarray) -> Any:
    return pred.take(rows)
