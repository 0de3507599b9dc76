"""quality_model="blend": the weighted mean of the kNN and the LightGBM quality models, saved and loaded exactly.

Why a test: the blend is a candidate default chosen by cross-validation (bench/tune.py --experiment quality_blend);
its kNN part bypasses the grouped search and saves its own bank, so both the arithmetic and the round trip must
hold on their own. Cost: < 2 s (synthetic 2-LLM log, 20-tree models)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixllm.catalogue import LLMSpec
from mixllm.predictors import BlendQuality, PredictorBank, PredictorConfig

pytestmark = pytest.mark.unit

SPECS = {n: LLMSpec(name=n, input_price_per_token=1e-6, output_price_per_token=2e-6) for n in ("a", "b")}
COMMON = {"n_estimators": 20, "min_child_samples": 5, "knn_k": 10, "knn_smoothing": 2.0, "quality_n_estimators": 20}


def _log(n: int = 120, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, np.ndarray]:
    """n queries x 2 LLMs: "a" succeeds where feature 0 > 0, "b" where it is < 0; two tags split on feature 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    rows = [{"query_id": f"q{i}", "prompt": f"p{i}", "model": m, "quality": float((x[i, 0] > 0) == (m == "a")),
             "cost_usd": 1e-4, "prompt_tokens": 10, "completion_tokens": 20, "task": None}
            for m in ("a", "b") for i in range(n)]
    return x, pd.DataFrame(rows), np.tile(np.arange(n), 2), np.where(x[:, 0] > 1, "t1", "t0")


def _bank(model: str, weight: float = 0.5) -> PredictorBank:
    x, log, idx, tags = _log()
    cfg = PredictorConfig(quality_model=model, blend_knn_weight=weight, **COMMON)
    return PredictorBank(cfg).fit(x, log, idx, ["a", "b"], tags=tags)


def _raw(bank: PredictorBank) -> np.ndarray:
    x, _, _, tags = _log()
    return np.column_stack([p.quality_output(x, tags) for p in bank.llms.values()])


@pytest.mark.parametrize("weight", [0.25, 0.5])
def test_blend_is_the_weighted_mean_of_knn_and_lightgbm(weight):
    blend = _bank("blend", weight)
    assert all(isinstance(p.quality, BlendQuality) for p in blend.llms.values())
    np.testing.assert_allclose(_raw(blend), weight * _raw(_bank("knn")) + (1 - weight) * _raw(_bank("lgbm")),
                               atol=1e-12)


def test_blend_round_trips_exactly_and_saves_the_shared_bank_once(tmp_path):
    x, _, _, tags = _log()
    bank = _bank("blend")
    index = bank.save(tmp_path)
    back = PredictorBank.load(tmp_path, index)
    tokens = np.full(len(x), 10.0)
    np.testing.assert_array_equal(back.predict(x, tokens, SPECS, tags)[0], bank.predict(x, tokens, SPECS, tags)[0])
    assert len(list(tmp_path.glob("*.bank.npy"))) == 1
