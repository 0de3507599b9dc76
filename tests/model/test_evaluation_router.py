"""The evaluation harness on the real (tiny) trained router: sweep, report, per-task figures, latency replay, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mixllm.replay import LatencyConfig, OnlineConfig
from mixllm.data import load_routerbench
from mixllm.evaluation import evaluate
from mixllm.router import MixLLMRouter

pytestmark = pytest.mark.model

REFERENCE = "gpt-4-1106-preview"


@pytest.fixture(scope="module")
def test_slice(routerbench_dir):
    """20 test queries per task (60 in all): small enough to replay in seconds, every task present."""
    log = load_routerbench(routerbench_dir, "test")
    keep = log.drop_duplicates("query_id").groupby("task").head(20)["query_id"]
    return log[log["query_id"].isin(set(keep))]


@pytest.fixture(scope="module")
def report(trained_router_dir, test_slice, routerbench_dir):
    router = MixLLMRouter.load(trained_router_dir)
    # A short waiting tolerance and a strong penalty, so the 60-query burst below exercises the waiting term.
    router.config = router.config.model_copy(update={"default_tau_ms": 300.0, "beta": 1.0})
    train = load_routerbench(routerbench_dir, "train")
    return evaluate(router, test_slice, reference=REFERENCE, train_log=train,
                    baselines=("single", "random", "oracle", "task_prior"),
                    latency=LatencyConfig(rate_per_s=1000.0, arrivals="uniform", max_wait_ms=1000.0,
                                          willingness_to_pay=100.0),
                    online=OnlineConfig(cost_levels=(0.25,), batch_size=5))


def test_router_sweep_spans_cheap_to_strong(report):
    res = report.policies["router"]
    assert report.main == "router" and report.n_queries == 60
    pts = sorted(res.points, key=lambda p: p["param"])
    # The lowest willingness to pay routes to cheap LLMs, the highest to dearer, better-predicted ones.
    assert pts[0]["rel_cost"] < pts[-1]["rel_cost"]
    assert pts[0]["rel_cost"] < 0.2
    m = res.metrics
    assert 0.0 < m["aiq"] <= report.policies["oracle"].metrics["aiq"] + 1e-9
    assert m["max_quality"] <= report.policies["oracle"].metrics["max_quality"] + 1e-9


def test_summary_is_flat_floats_with_per_task_gate_figures(report):
    summary = report.summary
    assert all(isinstance(v, float) for v in summary.values())
    for task in ("arc-challenge", "mbpp", "winogrande"):
        assert f"task/{task}/aiq" in summary and f"task/{task}/quality_at_25pct_cost" in summary
    assert math.isfinite(summary["aiq"]) and "baseline/task_prior/aiq" in summary
    doc = json.loads(report.to_json())
    assert doc["policies"]["router"]["kind"] == "router"


def test_latency_replay_waiting_awareness_reduces_timeouts(report):
    replays = report.latency["replays"]
    blind, aware = replays["wait_blind"], replays["wait_aware"]
    # 60 queries in 60 ms, all routed for the best predicted quality, pile up on the strong LLMs' few servers
    # (GPT-4: 8 servers, >= 0.6 s per call). Seeing the waits, the router spreads the burst over the 84 servers.
    assert blind["timeouts"] > 0
    assert aware["timeouts"] < blind["timeouts"]
    assert aware["mean_wait_ms"] < blind["mean_wait_ms"]


def test_cli_evaluate_writes_json_png_markdown(trained_router_dir, test_slice, tmp_path):
    from typer.testing import CliRunner

    from mixllm.cli import app

    data = tmp_path / "test.csv"
    test_slice.to_csv(data, index=False)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["evaluate", "--router", str(trained_router_dir), "--data", str(data),
                                      "--json", str(out), "--plot", str(tmp_path / "f.png"), "--markdown",
                                      str(tmp_path / "t.md"), "--reference", REFERENCE, "--baselines",
                                      "single,oracle", "--wtp", "0.0001", "--wtp", "0.01", "--wtp", "1", "--online"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["policies"]["router"]["points"]) == 3
    assert set(doc["online"]["scenarios"]) == {"stationary", "drift"}
    assert (tmp_path / "f.png").stat().st_size > 0
    assert "| **router** |" in (tmp_path / "t.md").read_text()
    headline = json.loads(result.stdout.strip().splitlines()[-1])
    assert np.isclose(headline["aiq"], doc["summary"]["aiq"], atol=1e-4)


def test_online_replay_feedback_routes_around_a_failing_llm(report):
    """Learning from feedback (through MixLLMRouter.learn, update_many's path) must move later decisions: when the
    LLM the frozen router prefers fails every query, both feedback kinds send far fewer queries to it."""
    drift = report.online["scenarios"]["drift"]["25pct"]
    frozen = drift["frozen"]
    assert frozen["degraded_share"] > 0.2
    for mode in ("refined", "thumbs"):
        assert drift[mode]["degraded_share"] < frozen["degraded_share"] / 2, drift
        assert drift[mode]["rel_quality"] > frozen["rel_quality"]
    stationary = report.online["scenarios"]["stationary"]["25pct"]
    point = next(p for p in report.policies["router"].points if p["param"] == stationary["willingness_to_pay"])
    # Without feedback the stream replay is the sweep point itself (same decisions, whatever the order).
    assert stationary["frozen"]["rel_quality"] == pytest.approx(point["rel_quality"])
    assert stationary["frozen"]["rel_cost"] == pytest.approx(point["rel_cost"])
    assert "online/drift/25pct/refined/degraded_share" in report.summary
    assert "Online replay" in report.to_markdown()


def test_online_replay_leaves_the_evaluated_router_unchanged(trained_router_dir, test_slice):
    router = MixLLMRouter.load(trained_router_dir)
    before = router.predict(test_slice["prompt"].unique()[:10].tolist())
    evaluate(router, test_slice, reference=REFERENCE, baselines=(), online=OnlineConfig(cost_levels=(0.25,)))
    after = router.predict(test_slice["prompt"].unique()[:10].tolist())
    assert "bandit_updates" not in router.manifest
    np.testing.assert_array_equal(router.scores(before, 0.01).score, router.scores(after, 0.01).score)
