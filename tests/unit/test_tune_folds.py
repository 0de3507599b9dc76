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
