"""The online feedback caps (mixllm.serving.caps): per request id and per source, on generated event streams."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixllm.schemas import FeedbackRecord, LogRecord
from mixllm.serving.caps import OnlineCaps

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)

event = st.tuples(st.sampled_from(["q1", "q2", "q3", "q4"]), st.sampled_from(["a", "b"]),
                  st.sampled_from(["rating", "quality", "cost"]), st.sampled_from(["s1", "s2", "s3"]),
                  st.integers(0, 5))  # seconds since the previous event


def _record(qid: str, model: str, kind: str, ts: datetime) -> FeedbackRecord | LogRecord:
    if kind == "rating":
        return FeedbackRecord(query_id=qid, model=model, rating=0.0, ts=ts)
    return LogRecord(query_id=qid, prompt="p", model=model, ts=ts,
                     **({"quality": 0.0} if kind == "quality" else {"cost_usd": 1.0}))


@settings(max_examples=200, deadline=None)
@given(events=st.lists(event, max_size=60), limit=st.integers(1, 6), window=st.integers(1, 20))
def test_caps_bound_every_request_id_and_every_source(events, limit: int, window: int) -> None:
    caps = OnlineCaps(limit, window)
    ts, applied = T0, []
    for qid, model, kind, source, gap in events:
        ts += timedelta(seconds=gap)
        if caps.admit(_record(qid, model, kind, ts), source) is None:
            applied.append((qid, model, kind, source, ts))
    per_key = defaultdict(int)
    for qid, model, kind, _, _ in applied:
        per_key[(qid, model, kind)] += kind != "cost"
    assert all(n <= 1 for n in per_key.values())  # one rating and one observed quality per (request, model)
    for qid, model, kind, _, _ in applied:  # a rating is never applied after the observed quality it yields to
        if kind == "rating":
            first_q = [t for q, m, k, _, t in applied if (q, m, k) == (qid, model, "quality")]
            first_r = [t for q, m, k, _, t in applied if (q, m, k) == (qid, model, "rating")]
            assert not first_q or first_r[0] <= first_q[0]
    capped = [(s, t) for _, _, k, s, t in applied if k != "cost"]
    for source, t in capped:  # in any window ending at an applied event: at most `limit` of that source
        recent = [u for s, u in capped if s == source and t - timedelta(seconds=window) < u <= t]
        assert len(recent) <= limit
    # events without a quality signal (a pass-through's cost) are never capped
    assert sum(a[2] == "cost" for a in applied) == sum(e[2] == "cost" for e in events)


def test_a_refusal_says_why_and_repeats_are_refused() -> None:
    caps = OnlineCaps(source_limit=2, window_seconds=60)
    first = FeedbackRecord(query_id="r1", model="a", rating=0.0, ts=T0)
    assert caps.admit(first, "evil") is None
    assert "already had a rating" in caps.admit(first.model_copy(update={"rating": 1.0}), "evil")
    assert caps.admit(FeedbackRecord(query_id="r2", model="a", rating=0.0, ts=T0), "evil") is None
    why = caps.admit(FeedbackRecord(query_id="r3", model="a", rating=0.0, ts=T0), "evil")
    assert "source 'evil'" in why and "MIXLLM_FEEDBACK_SOURCE_LIMIT" in why
    later = T0 + timedelta(seconds=61)  # the window moved on: the source may learn again
    assert caps.admit(FeedbackRecord(query_id="r3", model="a", rating=0.0, ts=later), "evil") is None
    quality = LogRecord(query_id="r1", prompt="p", model="a", quality=1.0, ts=later)
    assert caps.admit(quality, "other") is None  # an observed quality outranks the rating already applied
