"""Shadow and canary on the serving engine with real routers, a real spool and a real store (no HTTP): the canary
share is sticky per session and logged with the challenger's version; a missing challenger leaves every request
with the champion; sampled decisions are queued in the spool's commit and the shadow worker writes both decisions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mixllm import shadow
from mixllm.serving.engine import ServingEngine
from mixllm.serving.holder import LocalDirSource
from mixllm.serving.outbox import Outbox
from mixllm.serving.settings import ServingSettings
from mixllm.serving.shadow_worker import ShadowWorker
from mixllm.store import Store

pytestmark = pytest.mark.model
PROMPTS = ["What is the capital of France?", "Write a Python function that reverses a list.",
           "Solve 12 * 17 and explain.", "Summarise the causes of World War I in two sentences."]


@pytest.fixture
def make(tmp_path: Path, trained_router_dir: Path):
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    made: list[ServingEngine] = []

    def build(challenger: Path | None = None, **overrides) -> ServingEngine:
        outbox = Outbox(tmp_path / f"spool{len(made)}.db", lambda: Store(store_url), forward_interval=0.1)
        engine = ServingEngine(LocalDirSource(trained_router_dir), ServingSettings(poll_seconds=0, **overrides),
                               outbox, lambda: Store(store_url), max_prompt_chars=32_000,
                               challenger=LocalDirSource(challenger) if challenger else None)
        engine.start()
        made.append(engine)
        return engine

    build.store_url = store_url  # type: ignore[attr-defined]
    yield build
    for e in made:
        e.close()


def _route(engine: ServingEngine, prompts: list[str], session_id: str | None = None):
    return asyncio.run(engine.route(engine.requests(prompts, "prompts", 1000.0, session_id=session_id)))


def test_the_canary_share_is_sticky_per_session_and_logged_with_the_challengers_version(make, challenger_dir):
    engine = make(challenger_dir, canary_share=0.5)
    arms = {}
    for s in range(16):
        first = _route(engine, PROMPTS[:2], session_id=f"session-{s}")
        again = _route(engine, PROMPTS[2:], session_id=f"session-{s}")
        assert len({r.arm for r in first + again}) == 1  # one arm per session, turn after turn
        arms[s] = first[0].arm
        for r in first + again:
            assert r.decision.router_version == ("challenger-test" if r.arm == "challenger"
                                                 else engine.router.version)
            assert engine.outbox.decision(r.request.request_id).router_version == r.decision.router_version
    assert 3 <= sum(a == "challenger" for a in arms.values()) <= 13  # about half of 16 sessions
    status = engine.status()["canary"]
    assert status["active"] and status["router_version"] == "challenger-test"
    all_in = make(challenger_dir, canary_share=1.0)
    assert {r.arm for r in _route(all_in, PROMPTS)} == {"challenger"}  # no session: per request


def test_a_cleared_challenger_takes_the_larger_share_and_keeps_its_sessions(make, challenger_dir):
    """The canary flow tags a challenger cleared at its exposure budget; the source reports its version's tags at
    each poll (RegistrySource reads them with the alias) and the share grows from 10% to 60% of sessions."""
    from types import MappingProxyType

    from mixllm.canary import CLEARED_TAG

    engine = make(challenger_dir, canary_share=0.1, canary_cleared_share=0.6)
    sessions = [f"s{i}" for i in range(24)]
    before = {s: _route(engine, PROMPTS[:1], session_id=s)[0].arm for s in sessions}
    assert engine.canary_share() == 0.1 and engine.status()["canary"]["cleared"] is False
    engine.challenger.source.tags = MappingProxyType({CLEARED_TAG: "2026-12-03T12:00:00+00:00"})
    after = {s: _route(engine, PROMPTS[1:2], session_id=s)[0].arm for s in sessions}
    assert engine.status()["canary"]["share"] == 0.6 and engine.status()["canary"]["cleared"] is True
    assert all(after[s] == "challenger" for s in sessions if before[s] == "challenger")  # nobody switches back
    assert sum(a == "challenger" for a in after.values()) > sum(a == "challenger" for a in before.values()) + 5


def test_a_missing_challenger_leaves_every_request_with_the_champion(make, tmp_path):
    engine = make(tmp_path / "no-such-router", canary_share=1.0)
    routed = _route(engine, PROMPTS, session_id="s")
    assert {r.arm for r in routed} == {"champion"}
    status = engine.status()["canary"]
    assert status["active"] is False and "does not exist" in status["last_error"]


def test_sampled_decisions_are_queued_and_the_worker_stores_both_decisions(make, challenger_dir, tmp_path):
    engine = make(shadow_sample=1.0)
    routed = _route(engine, PROMPTS)
    assert engine.status()["shadow"]["queued"] == len(PROMPTS)
    worker = ShadowWorker(engine.outbox.path, LocalDirSource(challenger_dir), lambda: Store(make.store_url),
                          batch=3)
    assert worker.step() == 3 and worker.step() == 1 and worker.step() == 0
    worker.write_status()
    status = engine.status()["shadow"]
    assert status["queued"] == 0 and status["decided"] == 4 and status["challenger_version"] == "challenger-test"
    rows = shadow.read(Store(make.store_url))
    assert sorted(rows["request_id"]) == sorted(r.request.request_id for r in routed)
    assert set(rows["challenger_version"]) == {"challenger-test"}
    rep = shadow.report(rows)
    assert rep.n == 4 and 0.0 <= rep.agreement <= 1.0 and "agreement" in rep.to_text()
    # Same trained model on both sides: the greedy challenger agrees with each greedy champion decision
    greedy = rows.set_index("request_id")
    for r in routed:
        if r.decision.propensity == 1.0:
            assert greedy.loc[r.request.request_id, "challenger_model"] == r.decision.model


def test_without_a_challenger_the_queue_is_capped_not_grown(make, tmp_path):
    engine = make(shadow_sample=1.0)
    _route(engine, PROMPTS)
    worker = ShadowWorker(engine.outbox.path, LocalDirSource(tmp_path / "none"), lambda: Store(make.store_url),
                          queue_max=1)
    assert worker.step() == 0 and worker.counts["dropped"] == 3
    worker.write_status()
    status = engine.status()["shadow"]
    assert status["queued"] == 1 and "does not exist" in status["last_error"]


def test_the_spend_controller_sets_the_default_wtp_and_a_capped_tenant_is_refused(make):
    from mixllm.serving.schemas import RequestRejected

    engine = make(daily_spend_target_usd=5.0, spend_wtp_min=1.0, spend_wtp_max=50.0,
                  tenant_budgets={"capped": 0.0, "small": 0.01})
    assert engine.requests(PROMPTS[:1], "prompt", None)[0].willingness_to_pay == 50.0  # default 1000, clipped
    assert engine.requests(PROMPTS[:1], "prompt", 7.0)[0].willingness_to_pay == 7.0  # the caller's own wins
    with pytest.raises(RequestRejected, match="daily cap is 0") as refused:
        engine.requests(PROMPTS[:1], "prompt", None, tenant="capped")
    assert refused.value.kind == "over_budget" and refused.value.field == "x-mixllm-tenant"
    routed = asyncio.run(engine.route(engine.requests(PROMPTS[:1], "prompt", None, tenant="small")))
    from mixllm.serving.schemas import FeedbackRequest

    for _ in range(3):  # a repeated report counts once
        asyncio.run(engine.feedback(FeedbackRequest(request_id=routed[0].request.request_id, cost_usd=0.02)))
    with pytest.raises(RequestRejected, match="spent 0.0200 USD"):
        engine.requests(PROMPTS[:1], "prompt", None, tenant="small")
    status = engine.status()
    assert status["spend"]["spent_today_usd"] == 0.02 and "small" not in str(status["tenants"])
    hostile = asyncio.run(engine.route(engine.requests(PROMPTS[:1], "prompt", None)))[0]
    asyncio.run(engine.feedback(FeedbackRequest(request_id=hostile.request.request_id, cost_usd=1e12)))
    assert engine.status()["spend"]["spent_today_usd"] == pytest.approx(5.02)  # clipped at 5 USD per request


def test_feedback_on_a_canary_decision_is_learned_by_the_challenger_only(make, challenger_dir):
    from mixllm.serving.schemas import FeedbackRequest

    engine = make(challenger_dir, canary_share=1.0)
    routed = _route(engine, PROMPTS[:1])[0]
    assert routed.arm == "challenger"
    before = (sum(engine.router.bandit.n_updates.values()), sum(engine.challenger.router.bandit.n_updates.values()))
    out = asyncio.run(engine.feedback(FeedbackRequest(request_id=routed.request.request_id, quality=0.0)))
    assert out.applied_online, out
    after = (sum(engine.router.bandit.n_updates.values()), sum(engine.challenger.router.bandit.n_updates.values()))
    assert after == (before[0], before[1] + 1)


def test_a_malformed_queued_request_is_skipped_not_retried_forever(make, challenger_dir):
    engine = make(shadow_sample=1.0)
    _route(engine, PROMPTS[:2])
    engine.outbox.put([], [], ["not json", json.dumps({"prompt": "x", "willingness_to_pay": -1}),
                               json.dumps({"request_id": "r", "prompt": "ok", "champion_version": "v",
                                           "champion_model": "gpt-4-1106-preview", "ts": "yesterday",
                                           "willingness_to_pay": 10})])
    worker = ShadowWorker(engine.outbox.path, LocalDirSource(challenger_dir), lambda: Store(make.store_url))
    assert worker.step() == 5 and worker.step() == 0  # all five leave the queue
    assert worker.counts == {"decided": 2, "dropped": 0, "unroutable": 3}
