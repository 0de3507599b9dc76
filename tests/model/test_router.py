"""Behaviour of a tiny real router (session fixture `trained_router_dir`): artifact, decisions, feedback, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mixllm.data import load_routerbench
from mixllm.exceptions import ArtifactError, RoutingError, TrainingError, UnknownModelError
from mixllm.router import MixLLMRouter
from mixllm.schemas import FeedbackRecord, LogRecord, RouteConstraints

pytestmark = pytest.mark.model

WTP_QUALITY = 10.0  # USD per unit of quality: cost barely matters, the best predicted model wins


@pytest.fixture(scope="module")
def test_log(routerbench_dir) -> pd.DataFrame:
    return load_routerbench(routerbench_dir, "test")


@pytest.fixture(scope="module")
def wino(test_log) -> list[str]:
    """40 held-out winogrande prompts: one cluster of similar queries."""
    return test_log[test_log["task"] == "winogrande"]["prompt"].drop_duplicates().head(40).tolist()


@pytest.fixture
def router(trained_router_dir) -> MixLLMRouter:
    return MixLLMRouter.load(trained_router_dir)


def _models(decisions) -> list[str]:
    return [d.model for d in decisions]


def test_manifest_and_artifact_contents(router, trained_router_dir):
    m = router.manifest
    assert m["router_version"] == router.version and router.version != "unfitted"
    assert {"mixllm", "lightgbm", "sentence-transformers", "torch"} <= set(m["versions"])
    assert len(m["training_data_digest"]) == 16 and m["n_queries"] == 42
    assert m["tags"] == ["arc-challenge", "mbpp", "winogrande"] and m["tag_enhanced"] is True
    assert m["finetune_tags"] == {"arc-challenge": 14, "mbpp": 14, "winogrande": 14}  # what the encoder was tuned to
    assert set(router.models) == set(router.catalogue.names) and len(router.models) == 11
    assert json.loads((trained_router_dir / "manifest.json").read_text())["created"]


def test_route_trace_is_complete_and_greedy_is_deterministic(router, wino):
    a = router.route(wino[:5], 0.01, query_ids=[f"q{i}" for i in range(5)])
    b = router.route(wino[:5], 0.01)
    assert _models(a) == _models(b)
    d = a[0]
    assert d.query_id == "q0" and d.router_version == router.version and len(d.candidates) == 11
    chosen = next(c for c in d.candidates if c.model == d.model)
    assert chosen.score == max(c.score for c in d.candidates)
    for c in d.candidates:
        assert c.score == pytest.approx(c.predicted_quality - c.cost_term + c.exploration_bonus - c.waiting_penalty)
        assert c.cost_term == pytest.approx(c.predicted_cost_usd / 0.01) and c.exploration_bonus == 0.0
    explore = router.route(wino[:5], 0.01, greedy=False)
    assert all(c.exploration_bonus > 0 for c in explore[0].candidates)
    assert _models(explore) == _models(router.route(wino[:5], 0.01, greedy=False))


def test_wtp_trades_quality_for_cost(router, wino):
    pred = router.predict(wino)
    cost = {w: pred.cost[np.arange(len(wino)), router.choose(pred, w)].mean() for w in (1e-5, 1e-3, 10.0)}
    assert cost[1e-5] <= cost[1e-3] <= cost[10.0] and cost[1e-5] < cost[10.0]


def test_save_load_round_trip_gives_identical_decisions(router, wino, tmp_path):
    router.update_many([LogRecord(query_id=f"u{i}", prompt=p, model=router.models[0], quality=0.0, cost_usd=0.01)
                        for i, p in enumerate(wino[:5])])
    again = MixLLMRouter.load(router.save(tmp_path / "copy"))
    p1, p2 = router.predict(wino), again.predict(wino)
    np.testing.assert_array_equal(p1.quality, p2.quality)
    np.testing.assert_array_equal(p1.cost, p2.cost)
    for w in (1e-4, 1e-2, 1.0):
        assert [d.model_dump() for d in router.decide(p1, w, greedy=False)] == \
               [d.model_dump() for d in again.decide(p2, w, greedy=False)]
    assert again.manifest["bandit_updates"] == 5


def test_refined_negative_feedback_moves_similar_queries_away(router, wino):
    seen, held_out = wino[:20], wino[20:]
    before = _models(router.route(held_out, WTP_QUALITY))
    top = max(set(before), key=before.count)
    assert before.count(top) >= len(held_out) // 2
    records = [LogRecord(query_id=f"f{i}", prompt=p, model=top, quality=0.0) for i, p in enumerate(seen)]
    router.update_many(records * 2)
    after = _models(router.route(held_out, WTP_QUALITY))
    assert after.count(top) < before.count(top) // 2, (before, after)


def test_thumbs_down_by_query_id_moves_similar_queries_away(router, wino):
    seen, held_out = wino[:20], wino[20:]
    first = router.route(seen, WTP_QUALITY, query_ids=[f"t{i}" for i in range(20)])
    before = _models(router.route(held_out, WTP_QUALITY))
    top = max(set(before), key=before.count)
    downs = [FeedbackRecord(query_id=d.query_id, model=top, rating=0.0) for d in first]
    router.update_many(downs * 2)
    after = _models(router.route(held_out, WTP_QUALITY))
    assert after.count(top) < before.count(top) // 2, (before, after)
    with pytest.raises(RoutingError, match="pass the prompt"):
        router.update(FeedbackRecord(query_id="never-routed", model=top, rating=1.0))
    router.update(FeedbackRecord(query_id="never-routed", model=top, rating=1.0), prompt=seen[0])


def test_observed_cost_feedback_raises_predicted_cost(router, wino):
    m = router.models[1]
    j = router.models.index(m)
    base = router.scores(router.predict(wino[20:]), 0.01).cost[:, j].mean()
    router.update_many([LogRecord(query_id=f"c{i}", prompt=p, model=m, cost_usd=0.05) for i, p in enumerate(wino[:20])])
    assert router.scores(router.predict(wino[20:]), 0.01).cost[:, j].mean() > base + 0.01


def test_constraints_waiting_and_errors(router, wino):
    allowed = ("mistralai/mistral-7b-chat", "gpt-3.5-turbo-1106")
    d = router.route(wino[:5], WTP_QUALITY, RouteConstraints(allowed_models=allowed))
    assert set(_models(d)) <= set(allowed)
    assert all(c.reason == "not in allowed_models" for c in d[0].candidates if c.model not in allowed)
    top = router.route(wino[:1], WTP_QUALITY)[0].model
    queued = router.route(wino[:1], WTP_QUALITY, waiting_ms={top: 60_000})[0]
    assert queued.model != top
    assert next(c for c in queued.candidates if c.model == top).waiting_penalty > 1
    with pytest.raises(UnknownModelError):
        router.route(wino[:1], 1.0, RouteConstraints(allowed_models=("gpt-17",)))
    with pytest.raises(UnknownModelError):
        router.route(wino[:1], 1.0, waiting_ms={"gpt-17": 1.0})
    with pytest.raises(UnknownModelError):
        router.update(FeedbackRecord(query_id="x", model="gpt-17", rating=0.0), prompt="hi")
    with pytest.raises(RoutingError, match="max_cost_usd"):
        router.route(wino[:1], 1.0, RouteConstraints(max_cost_usd=1e-12))
    with pytest.raises(RoutingError, match="willingness_to_pay"):
        router.route(wino[:1], 0.0)


def test_unknown_model_in_training_log_is_a_clear_error(test_log):
    log = test_log.head(30).copy()
    log.loc[log.index[0], "model"] = "gpt-17"
    with pytest.raises(UnknownModelError, match="gpt-17"):
        MixLLMRouter().fit(log)


def test_remove_and_add_llm_touch_only_that_llm(router, test_log, wino):
    others = {n: router.predictors.llms[n] for n in router.models if n != "claude-v1"}
    router.remove_llm("claude-v1")
    assert "claude-v1" not in router.models and "claude-v1" not in router.catalogue.names
    assert all(router.predictors.llms[n] is p for n, p in others.items())
    assert "claude-v1" not in _models(router.route(wino[:10], WTP_QUALITY))
    from mixllm.catalogue import load_catalogue

    rows = test_log[test_log["model"] == "claude-v1"].groupby("task").head(10)
    router.add_llm(load_catalogue().get("claude-v1"), rows)
    assert router.models[-1] == "claude-v1" and all(router.predictors.llms[n] is p for n, p in others.items())
    assert len(router.route(wino[:2], WTP_QUALITY)[0].candidates) == 11
    with pytest.raises(UnknownModelError):
        router.remove_llm("gpt-17")


def test_load_rejects_incomplete_artifacts(tmp_path, trained_router_dir):
    with pytest.raises(ArtifactError):
        MixLLMRouter.load(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"format": 999}))
    with pytest.raises(ArtifactError, match="format"):
        MixLLMRouter.load(bad)


def test_staged_fit_equals_fit_and_the_per_llm_step_changes_nothing(routerbench_dir, tmp_path, wino):
    """The nightly flow trains in stages (representation -> one task per LLM -> finish); it must give the same
    router as `fit`, and the per-LLM step (run concurrently by `.map`) must not touch the router."""
    from mixllm.embeddings import QueryEncoder
    from mixllm.router import RouterConfig

    log = load_routerbench(routerbench_dir, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(8)["query_id"]
    log = log[log["query_id"].isin(keep)]
    config = RouterConfig(epochs=0, progress=False, cache_dir=tmp_path / "cache", seed=0)
    whole = MixLLMRouter(config).fit(log)

    staged = MixLLMRouter(config)
    prepared = staged.fit_representation(log)
    assert staged.models == () and prepared.names == whole.models
    predictors = [staged.fit_llm(name, prepared) for name in reversed(prepared.names)]
    assert staged.models == ()  # fit_llm only returns the models
    staged.finish(prepared, predictors)
    assert staged.models == whole.models
    a, b = whole.predict(wino[:6]), staged.predict(wino[:6])
    np.testing.assert_allclose(a.quality, b.quality)
    np.testing.assert_allclose(a.cost, b.cost)
    partial = MixLLMRouter(config)
    with pytest.raises(TrainingError, match="predictors missing"):
        partial.finish(partial.fit_representation(log), predictors[:2])
    with pytest.raises(TrainingError, match="fit_representation"):
        MixLLMRouter(config).finish(prepared, predictors)


def test_outcome_tags_refine_what_the_encoder_is_fine_tuned_toward_but_not_the_routing_tags(routerbench_dir,
                                                                                            tmp_path):
    from mixllm.embeddings import QueryEncoder
    from mixllm.router import RouterConfig

    log = load_routerbench(routerbench_dir, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(10)["query_id"]
    log = log[log["query_id"].isin(keep)]
    router = MixLLMRouter(RouterConfig(representation="finetune", finetune_tags="domain+outcome",
                                       finetune_max_queries=16, batch_size=8, progress=False, cache_dir=tmp_path))
    prepared = router.fit_representation(log)
    ft = router._finetune_tags
    assert len(ft) > 3 and {t.split("/")[0] for t in ft} == set(router.tags) and sum(ft.values()) == 30
    assert router.tags == ("arc-challenge", "mbpp", "winogrande") and set(prepared.tags) <= set(router.tags)
    assert router.encoder.weights_id != QueryEncoder.base().weights_id  # the encoder was fine-tuned


def test_saved_router_loads_through_the_registry_and_explores_with_recorded_propensities(trained_router_dir):
    """The artifact's manifest names its class; `load_router` gives a MixLLMRouter that decides exactly like
    `MixLLMRouter.load`. With softmax exploration on, decide draws with the router's seeded generator (the same
    seed repeats the draws), records each choice's probability, and sometimes leaves the greedy choice."""
    from mixllm.policy import ExplorationConfig, probabilities
    from mixllm.routers.registry import load_router

    router = load_router(trained_router_dir)
    assert type(router) is MixLLMRouter and json.loads((trained_router_dir / "manifest.json").read_text())[
        "router_class"] == "mixllm"
    prompts = [f"Question {i}: which word completes the sentence about the {w}?" for i, w in
               enumerate(["trophy", "suitcase", "garden", "ocean", "river", "city"] * 5)]
    pred = router.predict(prompts)
    greedy = router.decide(pred, 0.05)
    assert all(d.propensity == 1.0 for d in greedy)
    assert [d.model for d in greedy] == [router.models[j] for j in router.choose(pred, 0.05)]
    explore = ExplorationConfig(mode="softmax", temperature=0.05, max_share=0.5)
    runs = []
    for _ in range(2):
        r = load_router(trained_router_dir)
        r.config = r.config.model_copy(update={"exploration": explore})
        runs.append(r.decide(pred, 0.05))
    assert [d.model for d in runs[0]] == [d.model for d in runs[1]]
    p = probabilities(r.scores(pred, 0.05), explore)
    assert all(d.propensity == pytest.approx(p[i, r.models.index(d.model)]) for i, d in enumerate(runs[0]))
    assert any(d.propensity < 1.0 for d in runs[0])


def test_training_accepts_a_bandit_log_mixed_with_full_information_rows(routerbench_dir, tmp_path):
    """A log where most queries have one logged decision (with its propensity, quality from feedback or unknown)
    next to full-information rows trains a router; the weights reach the predictors and the digest."""
    from mixllm.data import load_routerbench
    from mixllm.router import RouterConfig, data_digest

    log = load_routerbench(routerbench_dir, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(12)["query_id"]
    log = log[log["query_id"].isin(keep)].reset_index(drop=True)
    rng = np.random.default_rng(0)
    qids = log["query_id"].unique()
    full = set(qids[: len(qids) // 3])
    logged = log[~log["query_id"].isin(full)].groupby("query_id").sample(1, random_state=0)
    logged = logged.assign(propensity=rng.uniform(0.02, 1.0, len(logged)),
                           quality=np.where(rng.random(len(logged)) < 0.3, np.nan, logged["quality"]))
    mixed = pd.concat([log[log["query_id"].isin(full)], logged], ignore_index=True)
    router = MixLLMRouter(RouterConfig(epochs=0, progress=False, cache_dir=tmp_path / "cache")).fit(mixed)
    metas = {n: p.meta for n, p in router.predictors.llms.items()}
    assert sum(m.get("logged_policy_rows", 0) for m in metas.values()) == len(logged)
    # default bandit_labels="residual": the models keep their full-information rows, labelled logged rows correct them
    assert all("residual" in m and m["residual_rows"] == m_rows for m, m_rows in
               ((metas[n], int(logged[logged["model"] == n]["quality"].notna().sum())) for n in metas
                if metas[n].get("logged_policy_rows")))
    ips = MixLLMRouter(RouterConfig(epochs=0, progress=False, cache_dir=tmp_path / "cache",
                                    predictor={"bandit_labels": "ips"})).fit(mixed)  # the rows join, weighted
    assert all(p.quality.w is not None for p in ips.predictors.llms.values() if p.meta.get("logged_policy_rows"))
    assert router.manifest["training_data_digest"] != data_digest(mixed.assign(propensity=None))
    assert len(router.route(["Write a python function that sorts a list."], 1.0)) == 1


def test_a_task_label_the_router_knows_is_the_tag_and_anything_else_takes_the_nearest_centroid(router, wino):
    """Evaluation with labels (`task_labels`): a known label decides the tag (mbpp's priors for a winogrande prompt
    change the prediction); an unknown label or none is the serving path; task_labels=False ignores labels."""
    base = router.predict(wino[:3]).quality
    np.testing.assert_array_equal(router.predict(wino[:3], tasks=["nope", None, "winogrande"]).quality, base)
    told = router.predict(wino[:3], tasks=["mbpp"] * 3).quality
    assert not np.allclose(told, base)
    router.config = router.config.model_copy(update={"task_labels": False})
    np.testing.assert_array_equal(router.predict(wino[:3], tasks=["mbpp"] * 3).quality, base)


def test_an_unlabelled_log_tagged_by_surface_clusters_round_trips(routerbench_dir, wino, tmp_path):
    """untagged='surface': tags from prompt + embedding (the count chosen by the log's outcomes) are what the saved
    router assigns new prompts after loading, without the log."""
    from mixllm.router import RouterConfig

    log = load_routerbench(routerbench_dir, "train")
    log = log[log["query_id"].isin(log.drop_duplicates("query_id").groupby("task").head(14)["query_id"])]
    config = RouterConfig(untagged="surface", tag_cluster_grid=(2, 3), progress=False, cache_dir=tmp_path / "cache")
    router = MixLLMRouter(config).fit(log.assign(task=None))
    assert router.tags and all(t.startswith("s") for t in router.tags) and len(router.tags) in (2, 3)
    again = MixLLMRouter.load(router.save(tmp_path / "router"))
    p1, p2 = router.predict(wino), again.predict(wino)
    np.testing.assert_array_equal(p1.quality, p2.quality)
    assert list(again._assign_tags(p2.embeddings, wino)) == list(router._assign_tags(p1.embeddings, wino))
