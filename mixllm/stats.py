"""Paired bootstrap over test queries: how sure is "router beats baseline" on a few hundred queries?

Why: a test split of 500-1,000 queries cannot separate routers whose AIQ differs by a few thousandths, and a table
of point figures invites reading noise as progress. Each resample draws the test queries with replacement (the SAME
draw for every policy, so the comparison is paired: a hard query drawn twice is hard for both), recomputes every
policy's frontier on it exactly as `mixllm.evaluation` does (means relative to the reference model on the same
resample, the non-decreasing hull, AIQ over [cheapest single LLM's cost, 1], quality at 25% of the reference's
cost), and the 95% interval of router - baseline is the 2.5th to 97.5th percentile of the per-resample differences
(percentile bootstrap). An interval above 0 says the router's lead is not an accident of which queries were drawn.

The policies' decisions are fixed (a trained router's choices per sweep point): the intervals cover the test set's
sampling noise, not training noise (seeds), which `bench/quality.py` reports separately.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mixllm.evaluation import frontier_metrics

METRICS = ("aiq", "quality_at_25pct_cost")


@dataclass(frozen=True)
class Interval:
    """router - baseline on one metric: the full-test-set difference and its bootstrap percentile interval.
    `valid`: resamples where both figures exist (quality at 25% cost is NaN when a hull starts dearer than 25%)."""

    estimate: float
    low: float
    high: float
    valid: int

    @property
    def above_zero(self) -> bool:
        return bool(self.low > 0)

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "valid": self.valid,
                "above_zero": self.above_zero}


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] query indices drawn with replacement (seeded): one draw shared by every policy."""
    if n < 1 or n_resamples < 1:
        raise ValueError(f"need n >= 1 queries and >= 1 resamples, got n={n}, n_resamples={n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _weights(indices: np.ndarray, n: int) -> np.ndarray:
    """[B, n] share of each query in each resample (counts / n): a resample's mean is one dot product."""
    b = len(indices)
    counts = np.bincount((indices + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
    return counts / n


def per_query_outcomes(cost: np.ndarray, quality: np.ndarray, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cost and quality [k, n] of each sweep point's choice per query (`choices[k, n]` indexes the columns of
    cost/quality [n, m]; -1 = no candidate: cost 0, quality 0, as in `TestSet.outcomes`)."""
    ch = np.asarray(choices, dtype=int)
    safe, picked = np.clip(ch, 0, None), ch >= 0
    rows = np.arange(ch.shape[1])
    return np.where(picked, cost[rows, safe], 0.0), np.where(picked, quality[rows, safe], 0.0)


def bootstrap_metrics(cost: np.ndarray, quality: np.ndarray, policies: Mapping[str, np.ndarray], ref: int,
                      indices: np.ndarray, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, np.ndarray]]:
    """{policy: {metric: [B] values}}: each policy's frontier metrics on each resample of the test queries.

    cost, quality: the test set's [n, m] true outcomes; policies: name -> choices [k, n] (test-set columns);
    ref: the reference model's column. Relative figures use the reference's means over the same resample, and
    AIQ's lower bound is the cheapest single LLM's relative cost on it, exactly as `evaluation.policy_result`."""
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    w = _weights(np.asarray(indices), len(cost))
    ref_c, ref_q = w @ cost[:, ref], w @ quality[:, ref]
    if not ((ref_c > 0).all() and (ref_q > 0).all()):
        raise ValueError("the reference model has zero mean cost or quality on some resample; choose another")
    lo = (w @ cost).min(axis=1) / ref_c
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, choices in policies.items():
        c, q = per_query_outcomes(cost, quality, choices)
        rel_c, rel_q = (w @ c.T) / ref_c[:, None], (w @ q.T) / ref_q[:, None]  # [B, k]
        rows = [frontier_metrics(rel_c[b], rel_q[b], lo[b]) for b in range(len(w))]
        out[name] = {m: np.array([r[m] for r in rows], float) for m in metrics}
    return out


def paired_interval(main: np.ndarray, other: np.ndarray, estimate: float, level: float = 0.95) -> Interval:
    """The percentile interval of main - other over paired resamples (NaN resamples dropped)."""
    diff = np.asarray(main, float) - np.asarray(other, float)
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        return Interval(estimate, math.nan, math.nan, 0)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diff, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), int(len(diff)))


def compare(samples: Mapping[str, Mapping[str, np.ndarray]], point: Mapping[str, Mapping[str, float]], main: str,
            level: float = 0.95) -> dict[str, dict[str, Interval]]:
    """{baseline: {metric: Interval of main - baseline}} for every policy of `samples` but `main`; `point`: each
    policy's metrics on the whole test set (the estimates)."""
    out = {}
    for name, figures in samples.items():
        if name == main:
            continue
        out[name] = {m: paired_interval(samples[main][m], figures[m],
                                        _diff(point[main].get(m), point[name].get(m)), level) for m in figures}
    return out


def _diff(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return math.nan
    return float(a) - float(b)
