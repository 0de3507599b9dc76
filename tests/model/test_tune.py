"""bench/tune.py end to end on a few real train rows: real encoder, real predictors, real evaluation."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mixllm.data import load_routerbench

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tune():
    path = Path(__file__).resolve().parents[2] / "bench" / "tune.py"
    spec = importlib.util.spec_from_file_location("bench_tune", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def log(tune, routerbench_dir):
    return tune._limit(load_routerbench(routerbench_dir, "train"), 24)  # 8 queries per task


def test_tiny_experiment_writes_pooled_out_of_fold_figures(tune, log, tmp_path):
    exp = tune.Experiment("tiny", "Does the harness run?", (
        tune.Variant("k=3 s=1", tune._knn(3, 1.0), "n/a"), tune.Variant("prior", tune._knn(3, 1e9))), tune.PLAIN,
        online=True)
    summary = tune.run(exp, log, [0], 2, tmp_path / "home", tmp_path / "out", "pytest", quick=True)
    assert [v["label"] for v in summary["variants"]] == ["k=3 s=1", "prior", "task prior"]
    assert summary["n_queries"] == 24
    for v in summary["variants"]:
        aiq = v["per_seed"][0]["aiq/predicted"]
        assert 0 < aiq <= 1.5 and math.isfinite(v["per_seed"][0]["quality_at_25pct_cost/predicted"])
    for v in summary["variants"][:2]:  # the online replay of each held-out fold (the ridge_lambda experiment's)
        utility = v["per_seed"][0]
        assert -1 < utility["utility/stationary/25pct/frozen"] <= 1
        assert utility["utility/drift/25pct/frozen"] <= utility["utility/stationary/25pct/frozen"]
    saved = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert saved["tiny"]["fold_seeds"] == [0] and saved["tiny"]["variants"][0]["docstring_record"] == "n/a"
    table = (tmp_path / "out" / "tune.md").read_text()
    assert "## tiny" in table and "| k=3 s=1 |" in table and "`pytest`" in table and "Utility" in table
    assert (tmp_path / "home" / "embeddings" / "cache.sqlite").is_file()  # base embeddings cached for reuse


def test_shared_representation_predicts_like_a_router_fitted_alone(tune, log, tmp_path):
    """The speed-up (predictor variants reuse one fitted encoder per fold) must not change what is measured."""
    from mixllm.router import MixLLMRouter

    exp = tune.Experiment("x", "", (tune.Variant("a", tune._knn(3, 1.0)), tune.Variant("b", tune._lgbm(3))),
                          tune.PLAIN)
    cfg_a, cfg_b = (tune.config_of(exp, v, tmp_path) for v in exp.variants)
    assert tune._representation_key(cfg_a) == tune._representation_key(cfg_b)
    base, lengths = MixLLMRouter(cfg_a), {}
    prepared = base.fit_representation(log)
    tune._with_predictors(base, prepared, cfg_a, lengths)  # trains the length models b then reuses
    shared = tune._with_predictors(base, prepared, cfg_b, lengths)
    alone = MixLLMRouter(cfg_b).fit(log)
    prompts = log["prompt"].drop_duplicates().head(10).tolist()
    got, want = shared.predict(prompts), alone.predict(prompts)
    np.testing.assert_allclose(got.quality, want.quality, atol=1e-6)
    np.testing.assert_allclose(got.cost, want.cost, rtol=1e-6)


def test_blend_variant_and_a_baseline_row_score_on_the_same_folds(tune, log, tmp_path):
    """quality_blend's two additions: a blend variant runs through the shared representation, and a registered
    task-free baseline (LightGBM on MiniLM) is scored on the same folds as a row of its own. Cost: ~30 s."""
    exp = tune.Experiment("tiny_blend", "", (tune.Variant("blend", tune._blend(5)),), tune.PLAIN, baselines=("lgbm",))
    summary = tune.run(exp, log, [0], 2, tmp_path / "home", None, "pytest", quick=True)
    labels = [v["label"] for v in summary["variants"]]
    assert labels == ["blend", "task prior", tune.BASELINE_LABELS["lgbm"]]
    for v in summary["variants"]:
        assert 0 < v["per_seed"][0]["aiq/predicted"] <= 1.5
