"""bench/tune.py's fold splitter: grouping by query id AND prompt holds, folds are balanced and seeded."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def _tune():
    path = Path(__file__).resolve().parents[2] / "bench" / "tune.py"
    spec = importlib.util.spec_from_file_location("bench_tune", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _rows() -> tuple[list[str], list[str]]:
    """40 queries x 3 LLM rows each; q5 repeats q4's prompt, q7 has two prompts (both must follow it)."""
    ids, prompts = [], []
    for i in range(40):
        for _ in range(3):
            ids.append(f"q{i}")
            prompts.append(f"prompt {i}")
    ids += ["q5", "q7", "q7"]
    prompts += ["prompt 4", "other prompt of q7", "other prompt of q7"]
    return ids, prompts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_query_or_prompt_in_two_folds(seed):
    ids, prompts = _rows()
    fold = _tune().grouped_folds(ids, prompts, 3, seed)
    for key in (ids, prompts):
        by_key: dict[str, set] = {}
        for k, f in zip(key, fold):
            by_key.setdefault(k, set()).add(int(f))
        assert all(len(v) == 1 for v in by_key.values())
    assert fold[ids.index("q4")] == fold[ids.index("q5")]  # linked through the shared prompt
    sizes = np.bincount([fold[ids.index(f"q{i}")] for i in range(40) if i != 5], minlength=3)
    assert sizes.max() - sizes.min() <= 2 and set(np.unique(fold)) == {0, 1, 2}


def test_fold_seeds_give_different_deterministic_splits():
    tune = _tune()
    ids, prompts = _rows()
    a, b = tune.grouped_folds(ids, prompts, 3, 0), tune.grouped_folds(ids, prompts, 3, 1)
    assert np.array_equal(a, tune.grouped_folds(ids, prompts, 3, 0))
    assert not np.array_equal(a, b)


def test_too_few_groups_or_folds_is_an_error():
    tune = _tune()
    with pytest.raises(ValueError, match="2 folds"):
        tune.grouped_folds(["a", "b"], ["x", "y"], 1, 0)
    with pytest.raises(ValueError, match="cannot fill"):
        tune.grouped_folds(["a", "b"], ["x", "x"], 2, 0)


def test_balanced_metrics_weigh_every_task_as_if_it_had_as_many_queries():
    """Task b has 2 queries beside a's 8; weighted equally, the figures are those of a test set where b's queries
    are repeated 4 times (plain means), and differ from the unweighted ones."""
    from mixllm.evaluation import policy_result
    from mixllm.testset import TestSet

    tune, rng = _tune(), np.random.default_rng(0)

    def testset(tasks: list[str], quality: np.ndarray, cost: np.ndarray) -> TestSet:
        n = len(tasks)
        return TestSet(np.array([f"q{i}" for i in range(n)]), [f"p{i}" for i in range(n)], np.array(tasks),
                       np.ones(n), ("cheap", "dear"), quality, cost, np.full((n, 2), np.nan))

    quality = np.vstack([np.tile([0.2, 0.9], (8, 1)), np.tile([0.9, 0.9], (2, 1))]) + rng.normal(0, 0.01, (10, 2))
    cost = np.tile([0.1, 1.0], (10, 1))
    choices = np.array([[0] * 10, [1] * 8 + [0] * 2, [1] * 10])  # cheap, dear where it pays, dear
    small = testset(["a"] * 8 + ["b"] * 2, quality, cost)
    rep = [*range(8), 8, 9, 8, 9, 8, 9, 8, 9]
    big = testset(["a"] * 8 + ["b"] * 8, quality[rep], cost[rep])
    params = np.arange(3.0)
    want = policy_result(big, "x", "policy", "", params, choices[:, rep], 1).metrics
    got = tune.balanced_metrics(small, choices, 1)
    plain = policy_result(small, "x", "policy", "", params, choices, 1).metrics
    assert got["aiq"] == pytest.approx(want["aiq"]) and got["aiq"] != pytest.approx(plain["aiq"])
    assert got["quality_at_25pct_cost"] == pytest.approx(want["quality_at_25pct_cost"], nan_ok=True)
