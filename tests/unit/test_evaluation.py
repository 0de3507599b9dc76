"""Frontier math (hull, interpolation, AIQ, APGR/CPT), the test-set pivot and the report, on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixllm.evaluation import (TestSet, aiq, apgr_cpt, cost_for_quality, evaluate, hull_value, nondecreasing_hull,
                               policy_result)
from mixllm.exceptions import ConfigError, ContractError

pytestmark = pytest.mark.unit

POINTS = ([0.0, 1.0, 1.5, 2.0, 3.0], [0.5, 0.6, 0.7, 0.9, 0.8])


def test_hull_drops_points_under_the_hull_and_after_the_best():
    hull = nondecreasing_hull(*POINTS)
    # (1, .6) and (1.5, .7) lie under the segment (0, .5)-(2, .9); (3, .8) is dominated by the cheaper (2, .9).
    assert hull.tolist() == [[0.0, 0.5], [2.0, 0.9]]


def test_hull_keeps_best_quality_on_equal_cost_and_single_point():
    assert nondecreasing_hull([1, 1, 2], [0.2, 0.4, 0.3]).tolist() == [[1.0, 0.4]]
    assert nondecreasing_hull([0.5], [0.7]).tolist() == [[0.5, 0.7]]
    with pytest.raises(ValueError):
        nondecreasing_hull([math.nan], [1.0])


def test_interpolation_on_the_hull():
    hull = nondecreasing_hull(*POINTS)
    assert hull_value(hull, 1.0) == pytest.approx(0.7)
    assert hull_value(hull, 5.0) == pytest.approx(0.9)  # flat after the best point
    assert math.isnan(hull_value(hull, -1.0))  # cheaper than any point: not reachable
    assert cost_for_quality(hull, 0.8) == pytest.approx(1.5)
    assert cost_for_quality(hull, 0.4) == 0.0
    assert math.isnan(cost_for_quality(hull, 0.95))


def test_aiq_hand_computed():
    hull = nondecreasing_hull(*POINTS)
    assert aiq(hull, 0.0, 1.0) == pytest.approx(0.6)  # integral of 0.5 + 0.2x over [0, 1]
    assert aiq(hull, 0.0, 4.0) == pytest.approx((1.4 + 2 * 0.9) / 4)  # flat 0.9 from 2 to 4
    late = np.array([[1.0, 0.5], [2.0, 1.0]])
    assert aiq(late, 0.0, 2.0) == pytest.approx(0.75 / 2)  # 0 left of the cheapest point
    assert aiq(late, 3.0, 4.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        aiq(late, 1.0, 1.0)


def test_apgr_and_cpt_hand_computed():
    out = apgr_cpt([0.5], [0.8])  # curve (0, 0), (0.5, 0.8), (1, 1)
    assert out["apgr"] == pytest.approx(0.2 + 0.45)
    assert out["cpt_50pct"] == pytest.approx(0.3125)
    assert out["cpt_80pct"] == pytest.approx(0.5)
    worse = apgr_cpt([0.5, 0.7], [0.9, 0.6])  # a worse point at a higher share does not lower the curve
    assert worse["apgr"] == pytest.approx(0.5 * 0.45 + 0.2 * 0.9 + 0.3 * 0.95)  # (0.7, 0.6) is lifted to 0.9


def _log(rows: list[tuple[str, str, str, float | None, float | None, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["query_id", "prompt", "model", "quality", "cost_usd", "task"])


def two_model_log() -> pd.DataFrame:
    """Strong: q=[1,1,1,0] at cost 10; weak: q=[1,0,0,0] at cost 1."""
    rows = []
    for i, (qs, qw) in enumerate([(1, 1), (1, 0), (1, 0), (0, 0)]):
        task = "a" if i < 2 else "b"
        rows += [(f"q{i}", f"prompt {i}", "strong", qs, 10.0, task), (f"q{i}", f"prompt {i}", "weak", qw, 1.0, task)]
    return _log(rows)


def test_two_model_oracle_apgr_cpt_and_report():
    report = evaluate(None, two_model_log(), baselines=("single", "oracle"))
    assert report.reference == "strong"
    oracle = report.policies["oracle"].metrics
    # Oracle points: all weak (share 0, PGR 0) and strong on q1, q2 (share 0.5, PGR 1).
    assert oracle["apgr"] == pytest.approx(0.75)
    assert oracle["cpt_50pct"] == pytest.approx(0.25)
    assert oracle["cpt_80pct"] == pytest.approx(0.4)
    # Relative: weak alone = (cost 0.1, quality 1/3); oracle best = cost (1+10+10+1)/40 = 0.55, quality 1.
    assert oracle["max_quality"] == pytest.approx(1.0)
    assert oracle["cost_at_max_quality"] == pytest.approx(0.55)
    assert set(report.policies["oracle"].tasks) == {"a", "b"}
    summary = report.summary
    assert summary["baseline/oracle/aiq"] == pytest.approx(oracle["aiq"])
    doc = json.loads(report.to_json())
    assert doc["policies"]["oracle"]["metrics"]["apgr"] == pytest.approx(0.75)
    assert "| oracle |" in report.to_markdown()


def test_task_slices_skip_a_task_where_the_reference_never_succeeds():
    report = evaluate(None, two_model_log(), baselines=("oracle",))
    # Task b: strong q=[1, 0] -> usable; task a: strong q=[1, 1]. Both have figures relative to their own queries.
    tasks = report.policies["oracle"].tasks
    assert tasks["a"]["max_quality"] == pytest.approx(1.0)
    assert tasks["b"]["max_quality"] == pytest.approx(1.0)


def test_testset_pivot_unknown_quality_missing_cost_and_repeated_ids():
    log = _log([
        ("x", "p1", "m1", 1.0, 1.0, "t"), ("x", "p1", "m2", None, 2.0, "t"),  # unknown quality -> 0, counted
        ("x", "p2", "m1", 0.0, 1.0, "t"), ("x", "p2", "m2", 1.0, 2.0, "t"),  # same id, other prompt: other query
        ("y", "p3", "m1", 1.0, None, "t"), ("y", "p3", "m2", 1.0, 2.0, "t"),  # unknown cost -> excluded
    ])
    test = TestSet.from_log(log)
    assert test.n == 2 and test.excluded == 1 and test.imputed == 1
    assert test.models == ("m1", "m2")
    kept = TestSet.from_log(log, unknown_quality="keep")
    assert np.isnan(kept.quality).sum() == 1
    assert test.prompts == ["p1", "p2"] and test.quality.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert test.outcome(np.array([1, -1])) == pytest.approx((1.0, 0.0))  # -1: no candidate, 0 cost and quality
    costs, quals = test.outcomes(np.array([[0, 0], [1, 1], [-1, -1]]))
    assert costs.tolist() == [1.0, 2.0, 0.0]
    assert quals.tolist() == [0.5, 0.5, 0.0]


def test_bad_logs_are_refused_with_a_clear_error():
    with pytest.raises(ContractError, match="lacks columns"):
        TestSet.from_log(pd.DataFrame({"query_id": ["a"]}))
    with pytest.raises(ContractError, match="empty"):
        TestSet.from_log(_log([]))
    with pytest.raises(ContractError, match="reference model"):
        evaluate(None, two_model_log(), reference="nope", baselines=("oracle",))
    with pytest.raises(ConfigError, match="unknown router 'magic'; registered routers: mixllm, "):
        evaluate(None, two_model_log(), baselines=("magic",))


def test_baselines_needing_train_are_skipped_with_reason():
    report = evaluate(None, two_model_log(), baselines=("oracle", "task_prior"))
    assert report.skipped == {"task_prior": "needs train_log"}
    assert "skipped: needs train_log" in report.to_markdown()


def test_plot_writes_a_small_png(tmp_path):
    report = evaluate(None, two_model_log(), baselines=("single", "oracle", "random"))
    path = report.plot(tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 200_000


def test_policy_result_points_are_relative_to_reference():
    test = TestSet.from_log(two_model_log())
    res = policy_result(test, "weak-only", "baseline", "", np.array([1.0]), np.full((1, 4), 1), 0)
    assert res.points == [{"param": 1.0, "rel_cost": pytest.approx(0.1), "rel_quality": pytest.approx(1 / 3)}]


# ---------------------------------------------------------------------------------------- properties ------------
coords = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
point_lists = st.lists(st.tuples(coords, coords), min_size=1, max_size=25)


@settings(max_examples=100, deadline=None)
@given(point_lists)
def test_hull_is_non_decreasing_and_dominates_every_point(points):
    c, q = np.array(points).T
    hull = nondecreasing_hull(c, q)
    assert np.all(np.diff(hull[:, 0]) > 0) and np.all(np.diff(hull[:, 1]) > 0)
    assert hull[0, 0] == c.min()
    assert hull[-1, 1] == q.max()
    for x, y in points:  # no point lies above the hull (flat after its best point)
        assert y <= hull_value(hull, x) + 1e-9


@settings(max_examples=100, deadline=None)
@given(point_lists, st.tuples(coords, coords))
def test_aiq_in_bounds_and_monotone_in_adding_points(points, extra):
    c, q = np.array(points).T
    lo, hi = 0.5, 8.0
    hull = nondecreasing_hull(c, q)
    value = aiq(hull, lo, hi)
    assert -1e-12 <= value <= q.max() + 1e-9
    bigger = nondecreasing_hull(np.r_[c, extra[0]], np.r_[q, extra[1]])
    assert aiq(bigger, lo, hi) >= value - 1e-9


def test_testset_reads_the_stores_nullable_integer_columns():
    """Rows the service logged have no completion tokens yet: the store gives pd.NA in Int64 columns."""
    from mixllm.evaluation import TestSet

    log = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q2"], "prompt": ["a", "a", "b", "b"],
                        "model": ["m1", "m2", "m1", "m2"], "quality": [1.0, 0.0, None, 1.0],
                        "cost_usd": [0.1, 0.2, 0.1, 0.2], "task": ["t", "t", "t", "t"]})
    log["prompt_tokens"] = pd.array([3, 3, None, 4], dtype="Int64")
    log["completion_tokens"] = pd.array([None, 5, None, 6], dtype="Int64")
    ts = TestSet.from_log(log)
    assert ts.n == 2 and ts.quality.dtype == float and np.isnan(ts.quality).sum() == 0  # unknown counted as 0
