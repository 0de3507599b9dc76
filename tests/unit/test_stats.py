"""Paired bootstrap (mixllm.stats) against brute force and an analytic case. Cost: ~4 CPU s, no model."""

from __future__ import annotations

import numpy as np
import pytest

from mixllm.evaluation import TestSet, frontier_metrics, policy_result
from mixllm.stats import bootstrap_metrics, compare, paired_interval, resample_indices

pytestmark = pytest.mark.unit


def _random_case(n: int = 40, m: int = 3, k: int = 5, seed: int = 1):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0.1, 1.0, (n, m)) * np.array([0.05, 0.3, 1.0])  # column 2 is the dear reference
    quality = (rng.uniform(size=(n, m)) < np.array([0.4, 0.6, 0.8])).astype(float)
    quality[:, 2] = np.maximum(quality[:, 2], quality[:, 0])  # the reference never scores 0 on a whole resample
    policies = {"a": rng.integers(-1, m, (k, n)), "b": rng.integers(0, m, (k, n))}
    return cost, quality, policies


def test_each_resample_equals_the_metrics_recomputed_on_the_drawn_queries():
    cost, quality, policies = _random_case()
    idx = resample_indices(len(cost), 25, seed=3)
    got = bootstrap_metrics(cost, quality, policies, ref=2, indices=idx)
    for b, rows in enumerate(idx):  # brute force: the drawn queries as a data set of their own
        c, q = cost[rows], quality[rows]
        lo = c.mean(axis=0).min() / c[:, 2].mean()
        for name, ch in policies.items():
            sel = ch[:, rows]
            pc = np.where(sel >= 0, c[np.arange(len(rows)), np.clip(sel, 0, None)], 0.0).mean(axis=1)
            pq = np.where(sel >= 0, q[np.arange(len(rows)), np.clip(sel, 0, None)], 0.0).mean(axis=1)
            want = frontier_metrics(pc / c[:, 2].mean(), pq / q[:, 2].mean(), lo)
            for metric in ("aiq", "quality_at_25pct_cost"):
                np.testing.assert_allclose(got[name][metric][b], want[metric], rtol=1e-12, equal_nan=True)


def test_the_identity_resample_reproduces_the_evaluation_report():
    cost, quality, policies = _random_case()
    n, m = cost.shape
    test = TestSet(np.arange(n).astype(str), [str(i) for i in range(n)], np.array(["t"] * n), np.ones(n),
                   ("x", "y", "z"), quality, cost, np.ones((n, m)))
    got = bootstrap_metrics(cost, quality, policies, ref=2, indices=np.arange(n)[None, :])
    for name, ch in policies.items():
        want = policy_result(test, name, "baseline", "", np.zeros(len(ch)), ch, 2).metrics
        assert got[name]["aiq"][0] == pytest.approx(want["aiq"], rel=1e-12)


def test_paired_resampling_of_a_constant_lead_has_no_width_and_a_mean_lead_has_the_analytic_width():
    n = 2000
    rng = np.random.default_rng(0)
    cost = np.column_stack([np.full(n, 0.1), np.full(n, 0.1), np.ones(n)])
    base = rng.uniform(0.0, 0.8, n)
    noise = rng.normal(0.05, 0.2, n)
    # Column 0 is always 0.1 better than column 1: one-point policies at 10% cost, so quality@25% = mean quality.
    quality = np.column_stack([base + 0.1, base, np.ones(n)])
    always = lambda j: np.full((1, n), j)  # noqa: E731
    idx = resample_indices(n, 2000, seed=5)
    s = bootstrap_metrics(cost, quality, {"r": always(0), "b": always(1)}, ref=2, indices=idx)
    iv = paired_interval(s["r"]["quality_at_25pct_cost"], s["b"]["quality_at_25pct_cost"], 0.1)
    assert iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1) and iv.above_zero
    # A noisy lead: the percentile interval of a mean difference is ~ mean +- 1.96 sd / sqrt(n).
    quality2 = np.column_stack([base + noise, base, np.ones(n)])
    s2 = bootstrap_metrics(cost, quality2, {"r": always(0), "b": always(1)}, ref=2, indices=idx)
    iv2 = paired_interval(s2["r"]["quality_at_25pct_cost"], s2["b"]["quality_at_25pct_cost"], noise.mean())
    half = 1.96 * noise.std(ddof=1) / np.sqrt(n)
    assert (iv2.high - iv2.low) / 2 == pytest.approx(half, rel=0.1)
    assert iv2.low < noise.mean() < iv2.high and iv2.valid == 2000


def test_compare_names_every_baseline_and_drops_unreachable_resamples():
    samples = {"router": {"aiq": np.array([1.0, 2.0, 3.0]), "quality_at_25pct_cost": np.array([1.0, np.nan, 1.0])},
               "base": {"aiq": np.array([0.0, 0.0, 0.0]), "quality_at_25pct_cost": np.array([0.5, 0.5, 0.5])}}
    point = {"router": {"aiq": 2.0, "quality_at_25pct_cost": 1.0}, "base": {"aiq": 0.0, "quality_at_25pct_cost": 0.5}}
    out = compare(samples, point, "router")
    assert list(out) == ["base"]
    assert out["base"]["aiq"].estimate == 2.0 and out["base"]["aiq"].low >= 1.0
    assert out["base"]["quality_at_25pct_cost"].valid == 2


def test_resample_indices_are_seeded_and_refuse_empty_draws():
    assert (resample_indices(10, 4, seed=1) == resample_indices(10, 4, seed=1)).all()
    with pytest.raises(ValueError):
        resample_indices(0)
