"""Session stickiness (mixllm.serving.sessions)."""

from __future__ import annotations

import time

import pytest

from mixllm.schemas import CandidateScore, RouteDecision
from mixllm.serving.sessions import SessionTracker

pytestmark = pytest.mark.unit


def decision(scores: dict[str, float], ineligible: tuple[str, ...] = ()) -> RouteDecision:
    cands = tuple(CandidateScore(model=m, predicted_quality=s, predicted_cost_usd=0.0, cost_term=0.0,
                                 exploration_bonus=0.0, waiting_penalty=0.0, score=s, eligible=m not in ineligible,
                                 reason="not allowed" if m in ineligible else None) for m, s in scores.items())
    best = max((c for c in cands if c.eligible), key=lambda c: c.score)
    return RouteDecision(model=best.model, willingness_to_pay=100.0, candidates=cands, router_version="v")


def test_session_keeps_its_model_within_the_margin_and_switches_beyond_it() -> None:
    s = SessionTracker(margin=0.05)
    assert s.choose("c1", decision({"a": 0.9, "b": 0.5})).model == "a"
    kept = s.choose("c1", decision({"a": 0.60, "b": 0.63}))  # b is better by 0.03 <= margin: stay on a
    assert (kept.model, kept.sticky, kept.router_choice) == ("a", True, "b")
    switched = s.choose("c1", decision({"a": 0.50, "b": 0.70}))  # better by 0.20 > margin: switch
    assert (switched.model, switched.sticky) == ("b", False)
    assert s.choose("c1", decision({"a": 0.69, "b": 0.70})).model == "b"  # now sticks to b


def test_session_switches_when_its_model_is_not_allowed_and_without_session_never_sticks() -> None:
    s = SessionTracker(margin=1.0)
    s.choose("c1", decision({"a": 0.9, "b": 0.5}))
    assert s.choose("c1", decision({"a": 0.9, "b": 0.5}, ineligible=("a",))).model == "b"
    assert s.choose(None, decision({"a": 0.1, "b": 0.5})).sticky is False


def test_sessions_expire_and_are_bounded() -> None:
    s = SessionTracker(margin=1.0, ttl_seconds=0.05, max_sessions=3)
    s.choose("old", decision({"a": 0.9, "b": 0.5}))
    time.sleep(0.1)
    assert s.choose("old", decision({"a": 0.1, "b": 0.5})).model == "b"  # expired: a fresh choice
    for i in range(10):
        s.choose(f"s{i}", decision({"a": 0.9, "b": 0.5}))
    assert len(s) == 3
