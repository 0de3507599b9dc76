"""A second night built on the first night's state routes as a router built from scratch on the same rows (issue
16): night 2 reads the first night's prompts back from the embedding cache and encodes only its new prompts, a
scratch build encodes every prompt with a cold cache. Real encoder, real kNN/LightGBM predictors, the library's
default router, 6 + 2 bundled train queries per task x 11 LLMs.

Why decisions are compared exactly but predictions within 1e-5: a text's vector moves in the last float bits
(~1e-7) with its batch mates (`QueryEncoder._embed`), and night 2 batches its new prompts without the old ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixllm.data import load_routerbench
from mixllm.router import MixLLMRouter, RouterConfig

pytestmark = pytest.mark.model

WTPS = (1e-4, 1e-2, 1.0, 100.0)


def _router(rows, cache: Path) -> MixLLMRouter:
    return MixLLMRouter(RouterConfig(progress=False, cache_dir=cache, seed=0)).fit(rows)


def test_night_two_on_a_warm_cache_routes_as_a_scratch_build(routerbench_dir: Path, tmp_path: Path) -> None:
    log = load_routerbench(routerbench_dir, "train")
    per_task = log.drop_duplicates("query_id").groupby("task")["query_id"]
    night1, night2 = set(per_task.nth(list(range(6)))), set(per_task.nth([6, 7]))
    first = log[log["query_id"].isin(night1)].reset_index(drop=True)
    both = log[log["query_id"].isin(night1 | night2)].reset_index(drop=True)
    test = load_routerbench(routerbench_dir, "test")
    prompts = test.drop_duplicates("query_id").groupby("task").head(4)["prompt"].tolist()

    _router(first, tmp_path / "warm")  # night 1 fills the cache
    incremental = _router(both, tmp_path / "warm")  # night 2: only the new prompts are encoded
    scratch = _router(both, tmp_path / "cold")
    a, b = incremental.predict(prompts), scratch.predict(prompts)
    assert incremental.manifest["training_data_digest"] == scratch.manifest["training_data_digest"]
    assert incremental.tags == scratch.tags
    assert np.allclose(a.quality, b.quality, atol=1e-5) and np.allclose(a.cost, b.cost, rtol=1e-5)
    for wtp in WTPS:
        assert np.array_equal(incremental.choose(a, wtp), scratch.choose(b, wtp)), wtp
    assert len({tuple(scratch.choose(b, w)) for w in WTPS}) > 1  # the sweep does move decisions
