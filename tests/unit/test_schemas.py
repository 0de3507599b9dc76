"""The typed twins of the data contracts (LogRecord, FeedbackRecord): what the service path validates with."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mixllm.schemas import FEEDBACK_COLUMNS, LOG_COLUMNS, FeedbackRecord, LogRecord

pytestmark = pytest.mark.unit

GOOD = {"query_id": "q1", "prompt": "What is 2+2?", "model": "gpt-4-1106-preview", "quality": 1.0,
        "cost_usd": 0.001, "prompt_tokens": 6, "completion_tokens": 1, "latency_ms": 120.0, "task": "math"}


def test_log_record_fields_are_the_canonical_columns() -> None:
    assert tuple(LogRecord.model_fields) == LOG_COLUMNS
    assert tuple(FeedbackRecord.model_fields) == FEEDBACK_COLUMNS


def test_good_record_defaults_ts_to_now_in_utc() -> None:
    rec = LogRecord(**GOOD)
    assert rec.ts.tzinfo is not None and rec.ts.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - rec.ts).total_seconds()) < 60
    assert "ts" not in rec.model_fields_set  # the store leaves a defaulted ts out of the row digest


def test_unknown_quality_is_allowed() -> None:
    assert LogRecord(**{**GOOD, "quality": None}).quality is None


@pytest.mark.parametrize("field,value", [
    ("query_id", ""), ("prompt", ""), ("model", ""), ("quality", 1.5), ("quality", -0.1),
    ("quality", math.nan), ("cost_usd", -0.01), ("cost_usd", math.inf), ("prompt_tokens", -3),
    ("prompt_tokens", 3.5), ("completion_tokens", "abc"), ("latency_ms", -1.0), ("extra", "x"),
])
def test_bad_log_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        LogRecord(**{**GOOD, field: value})


@settings(max_examples=50, deadline=None)
@given(rating=st.floats(allow_nan=True, allow_infinity=True))
def test_feedback_rating_must_be_a_probability(rating: float) -> None:
    if 0.0 <= rating <= 1.0:
        assert FeedbackRecord(query_id="q", model="m", rating=rating).rating == rating
    else:
        with pytest.raises(ValidationError):
            FeedbackRecord(query_id="q", model="m", rating=rating)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.0001, math.nan, math.inf])
def test_propensity_is_a_probability_above_zero(value: float) -> None:
    with pytest.raises(ValidationError):
        LogRecord(**{**GOOD, "propensity": value})


def test_policy_fields_default_to_not_chosen_by_a_policy() -> None:
    rec = LogRecord(**GOOD)
    assert rec.router_version is None and rec.propensity is None
    chosen = LogRecord(**GOOD, router_version="4", propensity=0.3)
    assert (chosen.router_version, chosen.propensity) == ("4", 0.3)
    with pytest.raises(ValidationError):
        LogRecord(**GOOD, router_version="")


def test_route_decision_propensity_defaults_to_greedy() -> None:
    from mixllm.schemas import RouteDecision

    d = RouteDecision(model="m", willingness_to_pay=1.0, candidates=(), router_version="1")
    assert d.propensity == 1.0
    with pytest.raises(ValidationError):
        RouteDecision(model="m", willingness_to_pay=1.0, candidates=(), router_version="1", propensity=0.0)


def test_feedback_source_defaults_to_api() -> None:
    assert FeedbackRecord(query_id="q", model="m", rating=1.0).source == "api"
