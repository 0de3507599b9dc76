"""The serving engine on a real trained router, a real outbox and a real store (no HTTP): micro-batch decisions,
logged propensities, feedback that survives a restart and a swap, and caps on what feedback may do online."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mixllm.data import load_routerbench
from mixllm.exceptions import RoutingError
from mixllm.router import MixLLMRouter
from mixllm.schemas import FeedbackRecord
from mixllm.serving.engine import Routed, ServingEngine
from mixllm.serving.holder import LocalDirSource
from mixllm.serving.outbox import Outbox
from mixllm.serving.schemas import FeedbackRequest
from mixllm.serving.settings import ServingSettings
from mixllm.store import Store

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def prompts(routerbench_dir: Path) -> list[str]:
    test = load_routerbench(routerbench_dir, "test").drop_duplicates("query_id")
    return test.groupby("task").head(4)["prompt"].tolist()[:30]


@pytest.fixture
def engines(tmp_path: Path, trained_router_dir: Path):
    """make(spool, **settings) -> a started engine on the trained router, all sharing one store."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    made: list[ServingEngine] = []

    def make(spool: str = "spool.db", **overrides) -> ServingEngine:
        outbox = Outbox(tmp_path / spool, lambda: Store(store_url), forward_interval=0.1)
        outbox.start()
        engine = ServingEngine(LocalDirSource(trained_router_dir), ServingSettings(poll_seconds=0, **overrides),
                               outbox, lambda: Store(store_url), max_prompt_chars=32_000)
        engine.start()
        made.append(engine)
        return engine

    make.store = lambda: Store(store_url)  # type: ignore[attr-defined]
    yield make
    for e in made:
        e.close()


def _route(engine: ServingEngine, prompts: list[str], wtp: float = 1000.0) -> list[Routed]:
    return asyncio.run(engine.route(engine.requests(prompts, "prompts", wtp)))


def _quality(engine: ServingEngine, prompts: list[str]) -> list[dict[str, float]]:
    """Predicted quality of every candidate (bandit corrections included), read without logging a decision."""
    router = engine.router
    return [{c.model: c.predicted_quality for c in d.candidates}
            for d in router.decide(router.predict(prompts), 1000.0)]


def test_a_micro_batch_is_decided_per_group_with_failures_isolated_and_logged_with_propensities(engines, prompts):
    engine = engines()
    reqs = (engine.requests(prompts[:4], "prompts", 100.0) + engine.requests(prompts[4:6], "prompts", 0.01)
            + engine.requests(prompts[:1], "prompts", 100.0, max_cost_usd=0.0))  # no model costs nothing
    results = engine.decide_batch(reqs)
    assert isinstance(results[-1], RoutingError) and all(isinstance(r, Routed) for r in results[:-1])
    router = MixLLMRouter.load(engine.holder.source.path)
    for req, res in zip(reqs[:-1], results[:-1]):
        alone = router.decide(router.predict([req.prompt]), req.willingness_to_pay)[0]
        assert res.decision.model == alone.model
        assert [c.score for c in res.decision.candidates] == pytest.approx([c.score for c in alone.candidates],
                                                                           abs=1e-6)
    ref = engine.outbox.decision(reqs[0].request_id)
    assert ref.model == results[0].choice.model and ref.router_version == engine.router.version
    assert ref.propensity == results[0].decision.propensity
    assert engine.outbox.decision(reqs[-1].request_id) is None  # an unanswered request is not logged
    engine.outbox.flush()
    logs = engines.store().logs().set_index("query_id")
    row = logs.loc[reqs[4].request_id]
    assert row["model"] == results[4].choice.model and row["router_version"] == engine.router.version
    assert 0 < row["propensity"] <= 1


def test_feedback_learned_online_survives_a_restart_and_a_swap(engines, prompts):
    first = engines()
    before = _quality(first, prompts[:8])
    routed = _route(first, prompts[:8])
    for r in routed:  # thumbs down on every favourite
        out = asyncio.run(first.feedback(FeedbackRequest(request_id=r.request.request_id, rating=0.0)))
        assert out.applied_online and not out.capped, out
    shifted = _quality(first, prompts[:8])
    drop = [b[r.choice.model] - s[r.choice.model] for b, s, r in zip(before, shifted, routed)]
    assert min(drop) > 0.01, drop  # the online update moved the favourites down
    assert first.close() == 0  # every event reached the store

    restarted = engines("spool-2.db")  # a new process: fresh router from disk, same store
    assert restarted.replay.applied == len(routed) and restarted.replay.error is None
    for s, q in zip(shifted, _quality(restarted, prompts[:8])):
        assert q == pytest.approx(s, abs=1e-5)
    assert restarted.holder.refresh(force=True)  # a swap loads the router again: it replays again
    for s, q in zip(shifted, _quality(restarted, prompts[:8])):
        assert q == pytest.approx(s, abs=1e-5)
    forgetful = engines("spool-3.db", replay=False)
    for b, q in zip(before, _quality(forgetful, prompts[:8])):
        assert q == pytest.approx(b, abs=1e-5)  # without the replay the shift is gone: it came from the replay


def test_a_flood_of_hostile_ratings_moves_routing_no_further_than_the_caps(engines, prompts, trained_router_dir):
    limit = 5
    engine = engines(feedback_source_limit=limit)
    routed = _route(engine, prompts)
    outs = [asyncio.run(engine.feedback(FeedbackRequest(request_id=r.request.request_id, rating=0.0,
                                                        source="hostile"))) for r in routed]
    outs += [asyncio.run(engine.feedback(FeedbackRequest(request_id=routed[0].request.request_id, rating=0.0,
                                                         source=f"sybil-{i}"))) for i in range(10)]
    assert [o.applied_online for o in outs[:limit]] == [True] * limit
    assert all(o.capped and not o.applied_online for o in outs[limit:])
    assert "source 'hostile'" in outs[limit].online_error and "already had a rating" in outs[-1].online_error
    reference = MixLLMRouter.load(trained_router_dir)  # what the caps allow: the first `limit` ratings, once each
    for r in routed[:limit]:
        reference.update(FeedbackRecord(query_id=r.request.request_id, model=r.choice.model, rating=0.0),
                         prompt=r.request.prompt)
    expected = [{c.model: c.predicted_quality for c in d.candidates}
                for d in reference.decide(reference.predict(prompts), 1000.0)]
    for e, q in zip(expected, _quality(engine, prompts)):
        assert q == pytest.approx(e, abs=1e-5)
    assert engine.close() == 0
    assert len(engines.store().feedback()) == len(outs)  # every rating is stored for the nightly retrain

    restarted = engines("spool-2.db", feedback_source_limit=limit)  # the replay applies the same caps
    assert restarted.replay.applied == limit and restarted.replay.refused == len(outs) - limit
    for e, q in zip(expected, _quality(restarted, prompts)):
        assert q == pytest.approx(e, abs=1e-5)
