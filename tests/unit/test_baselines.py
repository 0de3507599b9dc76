"""Baseline policies, the router adapter and the latency-constrained replay (queue math) on tiny hand cases.

The router here is a test double of the `MixLLMRouter` interface (predict/choose) so the queue arithmetic can be
checked exactly; the real router is exercised by tests/model/test_evaluation_router.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from mixllm import baselines as bl
from mixllm.catalogue import Catalogue, LatencyProfile, LLMSpec
from mixllm.evaluation import TestSet, evaluate
from mixllm.exceptions import ContractError

pytestmark = pytest.mark.unit


def make_log(quality: dict[str, list[float]], cost: dict[str, list[float]], tasks: list[str],
             tokens: int = 0) -> pd.DataFrame:
    rows = []
    for m in quality:
        for i, (q, c) in enumerate(zip(quality[m], cost[m])):
            rows.append({"query_id": f"q{i}", "prompt": f"prompt {i}", "model": m, "quality": q, "cost_usd": c,
                         "prompt_tokens": 10 * (i + 1), "completion_tokens": tokens, "task": tasks[i]})
    return pd.DataFrame(rows)


def test_score_sweep_covers_both_ends():
    q_hat = np.array([[0.9, 0.5], [0.2, 0.3]])
    c_hat = np.array([[10.0, 1.0], [10.0, 1.0]])
    sweep = bl.score_sweep("s", q_hat, c_hat, lambdas=np.array([1.0]))
    assert sweep.choices[-2].tolist() == [0, 1]  # best predicted quality (ties -> cheaper)
    assert sweep.choices[-1].tolist() == [1, 1]  # cheapest
    assert sweep.choices[0].tolist() == [1, 1]  # lam = 1: 0.9 - 10 < 0.5 - 1


def test_task_prior_uses_per_task_means_and_ignores_unknown_quality():
    train = TestSet.from_log(make_log({"a": [1, 1, 0, None], "b": [0, 1, 1, 1]}, {"a": [2, 2, 2, 2], "b": [1] * 4},
                                      ["x", "x", "y", "y"]), unknown_quality="keep")
    test = TestSet.from_log(make_log({"a": [1, 0], "b": [0, 1]}, {"a": [2, 2], "b": [1, 1]}, ["x", "y"]))
    sweep = bl.task_prior(train, test)
    # Task x: a 1.0 vs b 0.5 -> at high willingness a; task y: a 0.0 (the None is ignored) vs b 1.0 -> b.
    assert sweep.choices[-2].tolist() == [0, 1]
    report = evaluate(None, make_log({"a": [1, 0], "b": [0, 1]}, {"a": [2, 2], "b": [1, 1]}, ["x", "y"]),
                      baselines=("task_prior",), train_log=make_log({"a": [1, 1, 0, None], "b": [0, 1, 1, 1]},
                                                                    {"a": [2] * 4, "b": [1] * 4},
                                                                    ["x", "x", "y", "y"]))
    assert report.policies["task_prior"].metrics["max_quality"] == pytest.approx(2.0)  # 1.0 vs ref a's 0.5


def test_knn_includes_ties_and_averages_neighbours():
    train = TestSet.from_log(make_log({"a": [1, 0, 1], "b": [0, 0, 1]}, {"a": [1] * 3, "b": [1] * 3}, ["t"] * 3))
    test = TestSet.from_log(make_log({"a": [1], "b": [1]}, {"a": [1], "b": [1]}, ["t"]))
    train_emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    sweep = bl.knn(train, test, k=1, train_emb=train_emb, test_emb=np.array([[1.0, 0.0]]))
    # k=1 but rows 0 and 1 tie: a = mean(1, 0) = 0.5 > b = 0.0 -> a at every willingness to pay (equal costs).
    assert set(sweep.choices[:, 0].tolist()) == {0}
    assert sweep.name == "knn1"


@dataclass(frozen=True)
class FakePredictions:
    models: tuple[str, ...]
    quality: np.ndarray
    completion_tokens: np.ndarray
    cost: np.ndarray
    embeddings: np.ndarray


class QueueAwareStandIn:
    """Test double of the router: prefers "a" unless its wait exceeds 400 ms (then "b")."""

    catalogue = Catalogue(version="t", llms=(
        LLMSpec(name="a", input_price_per_token=0, output_price_per_token=0,
                latency=LatencyProfile(ttft_ms=1000, tokens_per_second=1000, concurrency=1)),
        LLMSpec(name="b", input_price_per_token=0, output_price_per_token=0,
                latency=LatencyProfile(ttft_ms=100, tokens_per_second=1000, concurrency=1)),
    ))
    models = ("b", "a")  # deliberately another order than the test set's columns

    def predict(self, prompts, prompt_tokens=None):
        n = len(prompts)
        return FakePredictions(self.models, np.full((n, 2), 0.5), np.zeros((n, 2)), np.ones((n, 2)),
                               np.zeros((n, 3)))

    def choose(self, pred, willingness_to_pay, greedy=True, constraints=None, waiting_ms=None):
        n = len(pred.quality)
        if waiting_ms is not None and waiting_ms["a"] > 400:
            return np.zeros(n, dtype=int)  # "b"
        return np.ones(n, dtype=int)  # "a"


def test_latency_replay_queue_math():
    log = make_log({"a": [1, 1, 1], "b": [0, 0, 0]}, {"a": [2, 2, 2], "b": [1, 1, 1]}, ["t"] * 3, tokens=0)
    test = TestSet.from_log(log)
    cfg = bl.LatencyConfig(rate_per_s=2.0, arrivals="uniform", max_wait_ms=600, willingness_to_pay=1.0)
    out = bl.latency_replay(QueueAwareStandIn(), test, cfg, ref=0)
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
                      latency=bl.LatencyConfig(arrivals="uniform"))
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
    sweep = bl.tfidf_lgbm(train, train)
    expected = np.array([0 if "python" in p else 1 for p in train.prompts])  # rows are sorted by query key
    assert (sweep.choices[-2] == expected).mean() > 0.9
