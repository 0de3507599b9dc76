"""Feedback -> quality labels of the decisions it rates (mixllm.feedback): precedence, collapse, refusals, digest."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mixllm.feedback import (LABEL_SOURCE, RATING_SOURCES, FeedbackConfig, RatingMapping, label_decisions,
                             labelled_counts, snapshot_digest)
from mixllm.schemas import FEEDBACK_COLUMNS, LOG_COLUMNS

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=1)


def _log(rows: list[dict]) -> pd.DataFrame:
    base = {"prompt": "p", "quality": None, "cost_usd": 0.001, "prompt_tokens": 3, "completion_tokens": 5,
            "latency_ms": 10.0, "task": None, "ts": T0, "router_version": "1", "propensity": 1.0}
    df = pd.DataFrame([{**base, **r} for r in rows], columns=list(LOG_COLUMNS))
    df["quality"] = df["quality"].astype(float)
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def _fb(rows: list[tuple]) -> pd.DataFrame:
    """(query_id, model, rating, minutes after T0, source)"""
    df = pd.DataFrame([{"query_id": q, "model": m, "rating": r, "ts": T0 + timedelta(minutes=t), "source": s}
                       for q, m, r, t, s in rows], columns=list(FEEDBACK_COLUMNS))
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


LOG = _log([
    {"query_id": "a", "model": "big", "propensity": 0.8},
    {"query_id": "b", "model": "big"},
    {"query_id": "c", "model": "small", "quality": 1.0, "router_version": None, "propensity": None},
    {"query_id": "d", "model": "small", "propensity": 0.2},
    {"query_id": "e", "model": "big"},
])


def test_ratings_label_the_decisions_they_rate_with_precedence_and_reasons() -> None:
    fb = _fb([
        ("a", "big", 1.0, 1, "u1"), ("a", "big", 0.0, 5, "u1"),   # same source twice: the later one counts
        ("b", "big", 0.0, 2, "u1"), ("b", "big", 1.0, 3, "u2"),   # two sources: the latest wins, both counted
        ("c", "small", 0.0, 1, "u1"),                               # observed quality outranks the rating
        ("d", "small", 0.5, 1, "u3"),                               # graded: linear
        ("zz", "big", 0.0, 1, "u1"), ("a", "small", 0.0, 1, "u1"),  # not in the log
    ])
    out = label_decisions(LOG, fb, now=NOW)
    rows = out.rows.set_index("query_id")
    assert rows.loc["a", "quality"] == 0.0 and rows.loc["a", LABEL_SOURCE] == "rating"
    assert rows.loc["a", RATING_SOURCES] == 1 and rows.loc["a", "propensity"] == 0.8
    assert rows.loc["b", "quality"] == 1.0 and rows.loc["b", RATING_SOURCES] == 2
    assert rows.loc["c", "quality"] == 1.0 and rows.loc["c", LABEL_SOURCE] == "observed"
    assert rows.loc["d", "quality"] == 0.5 and rows.loc["d", "propensity"] == 0.2
    assert math.isnan(rows.loc["e", "quality"]) and pd.isna(rows.loc["e", LABEL_SOURCE])  # nobody rated it
    assert list(out.rows.columns[:len(LOG_COLUMNS)]) == list(LOG_COLUMNS) and len(out.rows) == len(LOG)
    assert out.per_model == {"big": 2, "small": 1}
    reasons = out.aside.groupby("reason")["query_id"].apply(sorted).to_dict()
    assert reasons == {
        "superseded: a later rating of this decision from the same source": ["a"],
        "superseded: a later rating of this decision from another source": ["b"],
        "outranked: the decision has an observed quality": ["c"],
        "unmatched: no logged decision for this (query_id, model)": ["a", "zz"],
    }
    assert len(out.used) + len(out.aside) == len(fb)  # nothing dropped silently
    s = out.summary()
    assert (s["labelled_by_rating"], s["observed"], s["unlabelled"]) == (3, 1, 1)


def test_hostile_and_invalid_feedback_is_refused_with_reasons() -> None:
    fb = _fb([("a", "big", 1.0, 1, "u1"), ("b", "big", 0.0, -60, "u1"), ("d", "small", 0.0, 60 * 48, "u1"),
              ("e", "big", 1.7, 1, "u1"), ("e", "big", float("nan"), 1, "u2"), ("e", "big", 1.0, 1, " ")])
    out = label_decisions(LOG, fb, now=NOW)
    why = dict(zip(out.aside["query_id"] + "/" + out.aside["source"], out.aside["reason"]))
    assert why == {"b/u1": "refused: rating dated before the decision it rates",
                   "d/u1": "refused: rating dated in the future",
                   "e/u1": "invalid: rating outside [0, 1]", "e/u2": "invalid: rating is not a number",
                   "e/ ": "invalid: empty source"}
    assert out.per_model == {"big": 1}
    # a rating within the allowed clock skew before its decision still counts
    ok = label_decisions(LOG, _fb([("b", "big", 0.0, -1, "u1")]), now=NOW)
    assert ok.per_model == {"big": 1}
    strict = label_decisions(LOG, _fb([("b", "big", 0.0, -1, "u1")]), FeedbackConfig(max_clock_skew_seconds=0),
                             now=NOW)
    assert strict.per_model == {} and len(strict.aside) == 1


def test_a_flood_from_one_source_collapses_to_one_label() -> None:
    flood = _fb([("a", "big", 1.0, i, "bot") for i in range(1, 500)] + [("a", "big", 0.0, 600, "bot")])
    out = label_decisions(LOG, flood, now=NOW)
    assert out.rows.set_index("query_id").loc["a", "quality"] == 0.0
    assert out.rows.set_index("query_id").loc["a", RATING_SOURCES] == 1 and len(out.aside) == 499


def test_equal_timestamps_break_to_landing_order() -> None:
    out = label_decisions(LOG, _fb([("a", "big", 1.0, 1, "u1"), ("a", "big", 0.0, 1, "u2")]), now=NOW)
    assert out.rows.set_index("query_id").loc["a", "quality"] == 0.0


def test_mapping() -> None:
    r = np.array([0.0, 0.25, 0.5, 1.0])
    assert RatingMapping().quality(r).tolist() == [0.0, 0.25, 0.5, 1.0]
    assert RatingMapping(down=0.2, up=0.9).quality(r).tolist() == pytest.approx([0.2, 0.375, 0.55, 0.9])
    assert RatingMapping(graded="threshold").quality(r).tolist() == [0.0, 0.0, 1.0, 1.0]
    for bad in ({"down": 1.0, "up": 0.0}, {"up": 1.5}, {"graded": "log"}, {"threshold": 1.0}):
        with pytest.raises(ValidationError):
            RatingMapping(**bad)
    mapped = label_decisions(LOG, _fb([("a", "big", 0.0, 1, "u")]), FeedbackConfig(mapping=RatingMapping(down=0.1)),
                             now=NOW)
    assert mapped.rows.set_index("query_id").loc["a", "quality"] == pytest.approx(0.1)


def test_noisy_thumbs_average_to_the_true_quality() -> None:
    """Thumbs flipped with probability e: the plain 0/1 labels average to e + (1 - 2e) q (an LLM right 90% of the
    time looks right 82% of the time at e = 0.1); the mapping with `noise=e` gives labels whose mean is q."""
    rng = np.random.default_rng(0)
    for q, e in ((0.9, 0.1), (0.3, 0.2), (0.75, 0.0)):
        right = rng.random(200_000) < q
        thumbs = np.where(rng.random(len(right)) < e, ~right, right).astype(float)
        assert RatingMapping().quality(thumbs).mean() == pytest.approx(e + (1 - 2 * e) * q, abs=0.005)
        assert RatingMapping(noise=e).quality(thumbs).mean() == pytest.approx(q, abs=0.005)
    assert RatingMapping(noise=0.1).quality(np.array([0.0, 1.0])).tolist() == pytest.approx([-0.125, 1.125])
    with pytest.raises(ValidationError):
        RatingMapping(noise=0.5)
    assert "noise" not in FeedbackConfig().model_dump(exclude_none=True)["mapping"]  # old digests stay valid


def test_no_feedback_leaves_the_log_and_its_digest_alone() -> None:
    out = label_decisions(LOG, _fb([]), now=NOW)
    assert out.rows["quality"].isna().sum() == 4 and out.per_model == {} and out.aside.empty
    assert snapshot_digest("abc", None) == "abc"
    d1 = snapshot_digest("abc", "fb1")
    assert d1 != "abc" and d1 != snapshot_digest("abc", "fb2")
    assert d1 != snapshot_digest("abc", "fb1", FeedbackConfig(mapping=RatingMapping(graded="threshold")))


def test_labelled_counts_are_metric_names() -> None:
    out = label_decisions(_log([{"query_id": "a", "model": "mistralai/mistral-7b-chat"},
                                {"query_id": "b", "model": "claude:v2"}]),
                          _fb([("a", "mistralai/mistral-7b-chat", 1.0, 1, "u"), ("b", "claude:v2", 0.0, 1, "u")]),
                          now=NOW)
    assert labelled_counts(out.rows) == {"labelled_decisions/claude_v2": 1.0,
                                         "labelled_decisions/mistralai/mistral-7b-chat": 1.0,
                                         "labelled_decisions_total": 2.0, "observed_rows": 0.0}


def _many(n: int) -> pd.DataFrame:
    return _log([{"query_id": f"q{i}", "model": "big"} for i in range(n)])


def test_one_source_contributes_at_most_the_cap_and_the_rest_is_set_aside() -> None:
    fb = _fb([(f"q{i}", "big", 0.0, i + 1, "bot") for i in range(10)] + [("q0", "big", 1.0, 30, "u1"),
                                                                           ("q9", "big", 1.0, 31, "u2")])
    cfg = FeedbackConfig(max_labels_per_source=3)
    out = label_decisions(_many(10), fb, cfg, now=NOW)
    rows = out.rows.set_index("query_id")
    # the bot's latest three (q7, q8, q9) count; q9 is then superseded by u2's later rating; q0 is u1's
    assert sorted(out.used.query_id) == ["q0", "q7", "q8", "q9"]
    assert dict(zip(out.used.query_id, out.used.source)) == {"q0": "u1", "q7": "bot", "q8": "bot", "q9": "u2"}
    assert rows.loc["q9", "quality"] == 1.0 and rows.loc["q9", RATING_SOURCES] == 2
    capped = out.aside[out.aside.reason.str.startswith("capped:")]
    assert sorted(capped.query_id) == [f"q{i}" for i in range(7)] and set(capped.source) == {"bot"}
    assert "max_labels_per_source=3" in capped.reason.iloc[0]
    assert out.summary()["aside"][capped.reason.iloc[0]] == 7
    assert len(out.used) + len(out.aside) == len(fb)
    # no cap: every one of the bot's ratings labels its decision
    assert label_decisions(_many(10), fb, now=NOW).summary()["labelled_by_rating"] == 10


def test_the_cap_is_part_of_the_snapshot_digest_only_when_set() -> None:
    plain = snapshot_digest("abc", "fb1")
    assert snapshot_digest("abc", "fb1", FeedbackConfig(max_labels_per_source=None)) == plain
    assert snapshot_digest("abc", "fb1", FeedbackConfig(max_labels_per_source=5)) != plain
    # a digest recorded before the cap existed (the mapping and the clock skew only) stays valid
    before = {"mapping": {"down": 0.0, "up": 1.0, "graded": "linear", "threshold": 0.5},
              "max_clock_skew_seconds": 300.0}
    text = json.dumps({"log": "abc", "feedback": "fb1", "labels": before}, sort_keys=True)
    assert plain == hashlib.sha256(text.encode()).hexdigest()
    with pytest.raises(ValidationError):
        FeedbackConfig(max_labels_per_source=0)


@given(ratings=st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["u1", "u2", "bot"]), st.integers(1, 60),
                                  st.sampled_from([0.0, 0.5, 1.0])), max_size=40),
       cap=st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_caps_bound_every_source_and_account_for_every_rating(ratings: list[tuple], cap: int) -> None:
    fb = _fb([(f"q{q}", "big", r, t, s) for q, s, t, r in ratings])
    out = label_decisions(_many(10), fb, FeedbackConfig(max_labels_per_source=cap), now=NOW)
    assert (out.used.groupby("source").size() <= cap).all()
    assert len(out.used) + len(out.aside) == len(fb)
    free = label_decisions(_many(10), fb, now=NOW)
    assert set(out.used.query_id) <= set(free.used.query_id)  # a cap never labels what was unlabelled
    capped = out.aside[out.aside.reason.str.startswith("capped:")]
    kept = pd.concat([out.used, out.aside[out.aside.reason.str.contains("another source")]])
    for source, group in capped.groupby("source"):  # what a source loses to the cap is its oldest
        assert group.ts.max() <= kept[kept.source == source].ts.min()
    matched = fb[fb.query_id.isin(_many(10).query_id)]
    if matched.empty or matched.groupby("source").query_id.nunique().max() <= cap:
        assert capped.empty
        pd.testing.assert_frame_equal(out.rows, free.rows)  # a cap nobody reaches changes nothing
