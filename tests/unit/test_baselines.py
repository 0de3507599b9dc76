"""Baseline routers (registered, saved, loaded, deciding through the shared `Router.decide`), the router sweep and
the latency-constrained replay (queue math) on tiny hand cases.

The queue test uses a test double of the router interface (predict/choose/sweep) so the queue arithmetic can be
checked exactly; the real router is exercised by tests/model/test_evaluation_router.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixllm import replay
from mixllm.catalogue import Catalogue, LatencyProfile, LLMSpec
from mixllm.evaluation import evaluate
from mixllm.exceptions import ArtifactError, ConfigError, ContractError, RoutingError, TrainingError
from mixllm.routers import baselines as rb
from mixllm.routers.base import Predictions, Router
from mixllm.routers.registry import ROUTERS, load_router, register, router_class
from mixllm.schemas import RouteConstraints
from mixllm.testset import TestSet

pytestmark = pytest.mark.unit


def make_log(quality: dict[str, list[float]], cost: dict[str, list[float]], tasks: list[str],
             tokens: int = 0) -> pd.DataFrame:
    rows = []
    for m in quality:
        for i, (q, c) in enumerate(zip(quality[m], cost[m])):
            rows.append({"query_id": f"q{i}", "prompt": f"prompt {i}", "model": m, "quality": q, "cost_usd": c,
                         "prompt_tokens": 10 * (i + 1), "completion_tokens": tokens, "task": tasks[i]})
    return pd.DataFrame(rows)


def _pred(router, q_hat, c_hat):
    n, m = np.asarray(q_hat).shape
    return Predictions(router.models, np.asarray(q_hat, float), np.full((n, m), np.nan), np.asarray(c_hat, float),
                       np.zeros((n, 0)))


def test_score_router_sweep_covers_both_ends():
    router = rb.SingleModelRouter("a").fit(make_log({"a": [1], "b": [0]}, {"a": [1], "b": [1]}, ["t"]))
    pred = _pred(router, [[0.9, 0.5], [0.2, 0.3]], [[10.0, 1.0], [10.0, 1.0]])
    params, rows = rb.ScoreRouter.sweep(router, pred, [1.0])  # the score routers' sweep, not single's one point
    assert len(params) == len(rb.LAMBDA_GRID) + 2
    assert rows[-2].tolist() == [0, 0] and rows[-1].tolist() == [0, 0]  # single: only "a" is eligible
    task = rb.TaskPriorRouter().fit(make_log({"a": [1], "b": [0]}, {"a": [1], "b": [1]}, ["t"]))
    params, rows = task.sweep(_pred(task, [[0.9, 0.5], [0.2, 0.3]], [[10.0, 1.0], [10.0, 1.0]]), [1.0])
    assert rows[-2].tolist() == [0, 1]  # best predicted quality (ties -> cheaper)
    assert rows[-1].tolist() == [1, 1]  # cheapest
    lam1 = int(np.argmin(np.abs(rb.LAMBDA_GRID - 1.0)))
    assert rows[lam1].tolist() == [1, 1]  # lam = 1: 0.9 - 10 < 0.5 - 1
    tie = task.choose(_pred(task, [[0.5, 0.5]], [[2.0, 1.0]]), 1e6)
    assert tie.tolist() == [1]  # equal predicted quality: the cheaper candidate


def test_task_prior_uses_per_task_means_and_ignores_unknown_quality():
    train_log = make_log({"a": [1, 1, 0, None], "b": [0, 1, 1, 1]}, {"a": [2, 2, 2, 2], "b": [1] * 4},
                         ["x", "x", "y", "y"])
    router = rb.TaskPriorRouter().fit(train_log)
    pred = router.predict(["p", "q", "r"], tasks=["x", "y", "unseen"])
    # Task x: a 1.0 vs b 0.5; task y: a 0.0 (the None is ignored) vs b 1.0; unseen: means over all rows.
    np.testing.assert_allclose(pred.quality, [[1.0, 0.5], [0.0, 1.0], [2 / 3, 0.75]])
    assert [d.model for d in router.route(["p"], 1e6)] == ["b"]  # no task given: the global means
    report = evaluate(None, make_log({"a": [1, 0], "b": [0, 1]}, {"a": [2, 2], "b": [1, 1]}, ["x", "y"]),
                      baselines=("task_prior",), train_log=train_log)
    assert report.policies["task_prior"].metrics["max_quality"] == pytest.approx(2.0)  # 1.0 vs ref a's 0.5


def _toy_embed(prompts):
    """A deterministic stand-in encoder for the tiny logs: prompt i -> a 2-d unit vector by its number."""
    table = {"prompt 0": [1.0, 0.0], "prompt 1": [1.0, 0.0], "prompt 2": [0.0, 1.0]}
    return np.array([table.get(p, [1.0, 0.0]) for p in prompts])


def test_knn_includes_ties_and_averages_neighbours():
    train = make_log({"a": [1, 0, 1], "b": [0, 0, 1]}, {"a": [1] * 3, "b": [1] * 3}, ["t"] * 3)
    router = rb.KNNRouter(k=1, embed=_toy_embed).fit(train)
    pred = router.predict(["prompt 0"])
    # k=1 but rows 0 and 1 tie: a = mean(1, 0) = 0.5 > b = 0.0 -> a at every willingness to pay (equal costs).
    np.testing.assert_allclose(pred.quality, [[0.5, 0.0]])
    assert set(router.sweep(pred, [])[1][:, 0].tolist()) == {0}
    assert list(rb.KNNRouter.for_evaluation(train, train, k=1, embed=_toy_embed)) == ["knn1"]


def test_every_registered_baseline_fits_saves_loads_and_decides_alike(tmp_path):
    """Each baseline router is fitted, saved, loaded through `load_router` (the manifest names the class) and
    gives the same predictions and the same traced decisions after the round trip."""
    log = make_log({"a": [1, 0, 1, 0], "b": [0, 1, 1, 1]}, {"a": [2, 2, 2, 2], "b": [1] * 4}, ["x", "x", "y", "y"])
    prompts, tasks = ["prompt 0", "prompt 2", "prompt 3"], ["x", "y", "x"]
    routers = {"single": rb.SingleModelRouter("b"), "random": rb.RandomRouter(seed=3), "oracle": rb.OracleRouter(),
               "task_prior": rb.TaskPriorRouter(), "knn": rb.KNNRouter(k=2, embed=_toy_embed)}
    for name, router in routers.items():
        assert router_class(name) is type(router)
        router.fit(log)
        again = load_router(router.save(tmp_path / name))
        assert type(again) is type(router) and again.models == ("a", "b") and again.version == router.version
        if name == "knn":
            again.embed = _toy_embed
        if name == "random":  # the generator restarts from its seed in both
            router._rng = None
        want, got = router.predict(prompts, tasks=tasks), again.predict(prompts, tasks=tasks)
        np.testing.assert_array_equal(got.quality, want.quality)
        np.testing.assert_array_equal(got.cost, want.cost)
        decisions = again.decide(got, 1.0, query_ids=["q0", "q2", "q3"])
        assert [d.model for d in decisions] == [again.models[j] for j in again.choose(got, 1.0)]
        assert all(d.propensity == 1.0 and len(d.candidates) == 2 for d in decisions)
    assert [d.model for d in routers["single"].route(prompts, 1e-9)] == ["b"] * 3
    trace = routers["single"].route(["x"], 1.0)[0].candidates[0]
    assert not trace.eligible and "always uses b" in trace.reason


def test_lgbm_baselines_round_trip_exactly(tmp_path):
    prompts_a = [f"python code function number {i}" for i in range(30)]
    prompts_b = [f"riddle about a cat and a dog {i}" for i in range(30)]
    rows = []
    for i, p in enumerate(prompts_a + prompts_b):
        rows += [{"query_id": str(i), "prompt": p, "model": "a", "quality": float(i < 30), "cost_usd": 1.0,
                  "prompt_tokens": 5, "task": "t"},
                 {"query_id": str(i), "prompt": p, "model": "b", "quality": float(i >= 30), "cost_usd": 2.0,
                  "prompt_tokens": 5, "task": "t"}]
    log = pd.DataFrame(rows)
    embed = lambda ps: np.array([[float("python" in p), float("cat" in p), len(p) / 40] for p in ps])  # noqa: E731
    for router in (rb.TfidfLGBMRouter(), rb.LGBMRouter(embed=embed)):
        router.fit(log)
        again = load_router(router.save(tmp_path / router.name))
        again.embed = embed
        probe = ["python code function number 99", "riddle about a cat and a dog 99", "something else"]
        np.testing.assert_array_equal(again.predict(probe).quality, router.predict(probe).quality)
        np.testing.assert_allclose(router.predict(probe, [5, 5, 5]).cost, [[1.0, 2.0]] * 3, atol=1e-9)
        assert [d.model for d in again.route(probe[:2], 1e6)] == ["a", "b"]


def test_oracle_answers_only_prompts_of_its_log():
    log = make_log({"a": [1, None], "b": [0, 1]}, {"a": [2, 2], "b": [1, 1]}, ["t", "t"])
    oracle = rb.OracleRouter(log)
    np.testing.assert_array_equal(oracle.predict(["prompt 1", "prompt 0"]).quality, [[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(RoutingError, match="no labels for 1 of 2 prompts"):
        oracle.predict(["prompt 0", "a prompt it never saw"])


def test_registry_refuses_unknown_names_bad_classes_and_foreign_artifacts(tmp_path):
    with pytest.raises(ConfigError, match="registered routers: mixllm, plain_router, single"):
        router_class("magic")
    with pytest.raises(ConfigError, match="registered routers"):
        evaluate(None, make_log({"a": [1], "b": [0]}, {"a": [1], "b": [1]}, ["t"]), baselines=("magic",))
    with pytest.raises(ConfigError, match="already registered"):
        register(type("Impostor", (rb.KNNRouter,), {"name": "knn"}))
    with pytest.raises(ConfigError, match="not a Router"):
        register(int)

    class Mine(rb.TaskPriorRouter):
        name = "test_mine"

    register(Mine)
    try:
        saved = Mine().fit(make_log({"a": [1], "b": [0]}, {"a": [1], "b": [1]}, ["t"])).save(tmp_path / "mine")
        assert type(load_router(saved)) is Mine
    finally:
        ROUTERS.pop("test_mine")
    with pytest.raises(ArtifactError, match="not registered here"):
        load_router(saved)
    with pytest.raises(ArtifactError, match="no readable router manifest"):
        load_router(tmp_path / "nothing")
    with pytest.raises(TrainingError, match="no rows"):
        rb.SingleModelRouter("zzz").fit(make_log({"a": [1]}, {"a": [1]}, ["t"]))
    with pytest.raises(ConfigError, match="invalid options"):
        rb.KNNRouter.create(seed=0, nonsense=1)


def test_constraints_apply_to_baselines_too():
    router = rb.TaskPriorRouter().fit(make_log({"a": [1, 1], "b": [0, 0]}, {"a": [2, 2], "b": [1, 1]}, ["t"] * 2))
    only_b = RouteConstraints(allowed_models=("b",))
    assert [d.model for d in router.route(["p"], 1e6, constraints=only_b)] == ["b"]
    with pytest.raises(RoutingError, match="no eligible model"):
        router.route(["p"], 1e6, constraints=RouteConstraints(max_cost_usd=0.5))


class QueueAwareStandIn:
    """Test double of the router: prefers "a" unless its wait exceeds 400 ms (then "b")."""

    catalogue = Catalogue(version="t", llms=(
        LLMSpec(name="a", input_price_per_token=0, output_price_per_token=0,
                latency=LatencyProfile(ttft_ms=1000, tokens_per_second=1000, concurrency=1)),
        LLMSpec(name="b", input_price_per_token=0, output_price_per_token=0,
                latency=LatencyProfile(ttft_ms=100, tokens_per_second=1000, concurrency=1)),
    ))
    models = ("b", "a")  # deliberately another order than the test set's columns

    sweep = Router.sweep

    def predict(self, prompts, prompt_tokens=None, tasks=None):
        n = len(prompts)
        return Predictions(self.models, np.full((n, 2), 0.5), np.zeros((n, 2)), np.ones((n, 2)), np.zeros((n, 3)))

    def choose(self, pred, willingness_to_pay, greedy=True, constraints=None, waiting_ms=None):
        n = len(pred.quality)
        if waiting_ms is not None and waiting_ms["a"] > 400:
            return np.zeros(n, dtype=int)  # "b"
        return np.ones(n, dtype=int)  # "a"


def test_latency_replay_queue_math():
    log = make_log({"a": [1, 1, 1], "b": [0, 0, 0]}, {"a": [2, 2, 2], "b": [1, 1, 1]}, ["t"] * 3, tokens=0)
    test = TestSet.from_log(log)
    cfg = replay.LatencyConfig(rate_per_s=2.0, arrivals="uniform", max_wait_ms=600, willingness_to_pay=1.0)
    out = replay.latency_replay(QueueAwareStandIn(), test, cfg, ref=0)
    blind, aware = out["replays"]["wait_blind"], out["replays"]["wait_aware"]
    # Arrivals at 0, 500, 1000 ms; "a" serves one call at a time for 1000 ms.
    # Blind: waits 0, 500 (ok, <= 600), 1000 (> 600: abandoned) -> quality 2/3 of a's, 1 timeout.
    assert blind["timeouts"] == 1 and blind["mean_wait_ms"] == pytest.approx(500.0)
    assert blind["rel_quality"] == pytest.approx(2 / 3) and blind["rel_cost"] == pytest.approx(2 / 3)
    # Aware: the 2nd query sees a 500 ms wait on "a" and goes to "b"; the 3rd finds "a" free at 1000 ms.
    assert aware["timeouts"] == 0 and aware["mean_wait_ms"] == pytest.approx(0.0)
    assert aware["rel_quality"] == pytest.approx(2 / 3) and aware["reference_share"] == pytest.approx(2 / 3)
    assert aware["rel_cost"] == pytest.approx((2 + 1 + 2) / 6)


def test_router_sweep_maps_router_columns_and_refuses_unknown_models():
    log = make_log({"a": [1, 0], "b": [0, 1]}, {"a": [2, 2], "b": [1, 1]}, ["t", "t"])
    report = evaluate(QueueAwareStandIn(), log, wtps=[1.0, 2.0], baselines=("oracle",),
                      latency=replay.LatencyConfig(arrivals="uniform"))
    # The stand-in always picks its index 1 = "a" when not waiting: test column 0 -> equals the reference.
    assert report.main == "router"
    assert report.policies["router"].metrics["max_quality"] == pytest.approx(1.0)
    assert report.summary["latency/wait_aware/timeouts"] == 0.0
    assert "Latency-constrained replay" in report.to_markdown()
    with pytest.raises(ContractError, match="no rows in the test log"):
        evaluate(QueueAwareStandIn(), make_log({"a": [1], "c": [1]}, {"a": [1], "c": [1]}, ["t"]),
                 wtps=[1.0], baselines=())


def test_tfidf_lgbm_learns_a_separable_split():
    prompts_a = [f"python code function number {i}" for i in range(30)]
    prompts_b = [f"riddle about a cat and a dog {i}" for i in range(30)]
    rows = []
    for i, p in enumerate(prompts_a + prompts_b):
        good_a = i < 30
        rows += [{"query_id": str(i), "prompt": p, "model": "a", "quality": float(good_a), "cost_usd": 1.0,
                  "prompt_tokens": 5, "task": "t"},
                 {"query_id": str(i), "prompt": p, "model": "b", "quality": float(not good_a), "cost_usd": 1.0,
                  "prompt_tokens": 5, "task": "t"}]
    log = pd.DataFrame(rows)
    train = TestSet.from_log(log)
    sweep = replay.router_sweep("tfidf_lgbm", rb.TfidfLGBMRouter().fit(log), train, [])
    expected = np.array([0 if "python" in p else 1 for p in train.prompts])  # rows are sorted by query key
    assert (sweep.choices[-2] == expected).mean() > 0.9


def test_a_saved_baseline_loads_wherever_a_router_is_loaded(tmp_path):
    """The service's directory source, the pipeline's evaluation and `mixllm route` load through `load_router`, so
    a baseline artifact is served, evaluated and routed as what it is (`MixLLMRouter.load` would refuse it)."""
    import json

    from typer.testing import CliRunner

    from mixllm import pipeline
    from mixllm.cli import app
    from mixllm.config import Settings
    from mixllm.serving.holder import LocalDirSource

    log = make_log({"a": [1, 1, 0], "b": [0, 1, 1]}, {"a": [2] * 3, "b": [1] * 3}, ["x", "x", "y"])
    saved = rb.SingleModelRouter("b").fit(log).save(tmp_path / "single")
    assert type(LocalDirSource(saved).load("any")) is rb.SingleModelRouter
    report, metrics = pipeline.evaluate_router(saved, log, pipeline.PipelineConfig(baselines=("random",)),
                                               Settings())
    assert metrics["default_wtp/cost_usd"] == pytest.approx(1.0) and "random" in report.policies
    out = CliRunner().invoke(app, ["route", "--router", str(saved), "--wtp", "1"],
                             input=json.dumps({"id": 1, "prompt": "p"}) + "\n")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["model"] == "b"


def test_decide_explores_with_the_routers_own_seeded_generator_and_records_propensities():
    """With exploration on, `decide` draws through `policy.select` with the router's generator: the same seed gives
    the same decisions, each decision carries the probability of its model (`policy.probabilities`), non-greedy
    choices happen, and `choose` (what the evaluation sweeps) stays greedy."""
    from mixllm import policy

    class Exploring(rb.TaskPriorRouter):
        name = "test_exploring"
        exploration = policy.ExplorationConfig(mode="epsilon", epsilon=0.5, max_share=0.5)

    log = make_log({"a": [1, 1, 0], "b": [0, 1, 1], "c": [0, 0, 1]}, {"a": [2] * 3, "b": [1] * 3, "c": [1] * 3},
                   ["x", "x", "y"])
    prompts, tasks = [f"p{i}" for i in range(200)], ["x"] * 200
    runs = []
    for _ in range(2):
        router = Exploring(seed=7).fit(log)
        pred = router.predict(prompts, tasks=tasks)
        runs.append(router.decide(pred, 1e3))
    assert [d.model for d in runs[0]] == [d.model for d in runs[1]]
    probs = policy.probabilities(router.scores(pred, 1e3), router.exploration)
    greedy = router.choose(pred, 1e3)
    for d, row, g in zip(runs[0], probs, greedy):
        assert d.propensity == pytest.approx(row[router.models.index(d.model)])
    explored = sum(d.model != router.models[g] for d, g in zip(runs[0], greedy))
    away = 1.0 - probs[np.arange(len(greedy)), greedy]  # each decision's chance of leaving the greedy choice
    assert away.sum() > 50 and abs(explored - away.sum()) < 5 * np.sqrt((away * (1 - away)).sum())
    assert all(d.propensity < 1 for d in runs[0])
    assert (router.choose(pred, 1e3) == greedy).all()
    plain = rb.TaskPriorRouter(seed=7).fit(log)
    assert all(d.propensity == 1.0 for d in plain.decide(plain.predict(prompts, tasks=tasks), 1e3))


def test_mlp_router_learns_a_separable_split_and_round_trips(tmp_path):
    """RouterBench's MLP predictor (registered "mlp"): on a toy embedding where 'a' wins the python prompts and 'b'
    the riddles it routes each to its winner, and the saved numpy weights predict exactly what the fitted net did."""
    prompts = [f"python code {i}" for i in range(40)] + [f"riddle cat {i}" for i in range(40)]
    rows = []
    for i, p in enumerate(prompts):
        rows += [{"query_id": str(i), "prompt": p, "model": "a", "quality": float(i < 40), "cost_usd": 1.0,
                  "prompt_tokens": 5, "task": "t"},
                 {"query_id": str(i), "prompt": p, "model": "b", "quality": float(i >= 40), "cost_usd": 1.0,
                  "prompt_tokens": 5, "task": "t"}]
    embed = lambda ps: np.array([[float("python" in p), float("cat" in p)] for p in ps])  # noqa: E731
    router = rb.MLPRouter(hidden=8, seed=0, embed=embed).fit(pd.DataFrame(rows))
    assert router_class("mlp") is rb.MLPRouter
    again = load_router(router.save(tmp_path / "mlp"))
    again.embed = embed
    probe = ["python code 99", "riddle cat 99"]
    np.testing.assert_array_equal(again.predict(probe).quality, router.predict(probe).quality)
    assert [d.model for d in again.route(probe, 1e6)] == ["a", "b"]
    assert again.hidden == 8 and ((router.predict(probe).quality >= 0) & (router.predict(probe).quality <= 1)).all()
