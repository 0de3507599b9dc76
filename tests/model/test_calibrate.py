"""`mixllm calibrate`: the willingness to pay that holds a spend target, checked against brute force on a real
(TF-IDF + LightGBM) registered router trained on a bundled slice, and the CLI on the bundled test files."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mixllm import calibrate as cal
from mixllm.cli import app
from mixllm.data import load_routerbench
from mixllm.exceptions import ConfigError, ContractError
from mixllm.routers.baselines import TfidfLGBMRouter

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def data(routerbench_dir):
    train = load_routerbench(routerbench_dir, "train")
    train = train[train["query_id"].isin(train.drop_duplicates("query_id").groupby("task").head(120)["query_id"])]
    test = load_routerbench(routerbench_dir, "test")
    keep = test.drop_duplicates("query_id").groupby("task").head(40)["query_id"]
    return train, test[test["query_id"].isin(keep)].reset_index(drop=True)


@pytest.fixture(scope="module")
def router(data):
    return TfidfLGBMRouter(seed=0).fit(data[0])


@pytest.fixture(scope="module")
def traffic(data):
    return cal.recent_traffic(data[1])


def brute_cost_per_1k(router, traffic, wtp: float, correction: float = 1.0) -> float:
    pred = router.predict(traffic["prompt"].tolist(), traffic["prompt_tokens"].tolist())
    chosen = router.choose(pred, wtp)
    return float(pred.cost[np.arange(len(chosen)), chosen].mean() * 1000 * correction)


def test_cost_target_is_held_with_the_best_quality(router, traffic):
    spend = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1.0), n_boot=200)
    assert spend.feasible and spend.requests == len(traffic)
    assert spend.chosen.cost_per_1k_requests.mean <= 1.0
    within = [p for p in spend.curve if p.cost_per_1k_requests.mean <= 1.0]
    assert spend.chosen.quality.mean == max(p.quality.mean for p in within)
    assert any(p.cost_per_1k_requests.mean > 1.0 for p in spend.curve)  # the target binds on this traffic
    assert spend.chosen.cost_per_1k_requests.mean == pytest.approx(
        brute_cost_per_1k(router, traffic, spend.chosen.willingness_to_pay))
    iv = spend.chosen.cost_per_1k_requests
    assert iv.low <= iv.mean <= iv.high and iv.low < iv.high


def test_refined_grid_finds_a_point_between_coarse_ones(router, traffic):
    coarse = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1.0), refine=0, n_boot=100)
    fine = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1.0), refine=40, n_boot=100)
    assert len(fine.curve) == len(coarse.curve) + 40
    assert fine.chosen.quality.mean >= coarse.chosen.quality.mean


def test_conservative_holds_the_upper_bound(router, traffic):
    spend = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1.0, conservative=True), n_boot=200)
    assert spend.chosen.cost_per_1k_requests.high <= 1.0


def test_share_target(router, traffic):
    top = "gpt-4-1106-preview"
    spend = cal.calibrate(router, traffic, cal.SpendTarget(model=top, max_share=0.2), n_boot=200)
    assert spend.feasible and spend.chosen.target_share.mean <= 0.2
    assert spend.chosen.shares.get(top, 0.0) == pytest.approx(spend.chosen.target_share.mean)
    with pytest.raises(ConfigError, match="not one of the router's models"):
        cal.calibrate(router, traffic, cal.SpendTarget(model="gpt-9", max_share=0.2))


def test_a_target_above_every_point_does_not_bind(router, traffic):
    spend = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1e6), n_boot=50)
    top = max(p.cost_per_1k_requests.mean for p in spend.curve)
    assert spend.feasible and "does not bind" in spend.reason and f"{top:.4g}" in spend.reason
    assert spend.chosen.quality.mean == max(p.quality.mean for p in spend.curve)
    binding = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1.0), n_boot=50)
    assert "does not bind" not in binding.reason


def test_unreachable_target_returns_the_cheapest_point(router, traffic):
    spend = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1e-9), n_boot=50)
    assert not spend.feasible and "lowest reachable" in spend.reason
    assert spend.chosen.cost_per_1k_requests.mean == min(p.cost_per_1k_requests.mean for p in spend.curve)


def test_cost_check_corrects_a_biased_cost_prediction(router, data, traffic):
    logs = data[1]
    plain = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1.0), logs=logs, n_boot=50)
    doubled = logs.assign(cost_usd=logs["cost_usd"] * 2)
    biased = cal.calibrate(router, traffic, cal.SpendTarget(cost_per_1k_requests=1.0), logs=doubled, n_boot=50)
    assert plain.cost_check["rows"] == logs["cost_usd"].notna().sum()
    assert biased.cost_correction == pytest.approx(2 * plain.cost_correction)
    assert set(plain.cost_check["per_model"]) == set(router.models)
    # the same willingness to pay costs twice as much once corrected, so the doubled log gets a lower one
    assert biased.chosen.willingness_to_pay <= plain.chosen.willingness_to_pay
    assert biased.chosen.cost_per_1k_requests.mean <= 1.0


def test_target_validation():
    for bad in ({}, {"cost_per_1k_requests": 1.0, "model": "a", "max_share": 0.1}, {"model": "a"},
                {"max_share": 0.5}, {"cost_per_1k_requests": -1.0}, {"model": "a", "max_share": 1.5}):
        with pytest.raises(ValueError):
            cal.SpendTarget(**bad)


def test_recent_traffic_counts_each_request_once_and_honours_the_window(data):
    logs = data[1]
    assert len(cal.recent_traffic(logs)) == len(logs.drop_duplicates(["query_id", "prompt"]))
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    stamped = logs.assign(ts=[now - timedelta(days=1 if i % 2 else 30) for i in range(len(logs))])
    recent = cal.recent_traffic(stamped, days=7, now=now)
    assert set(recent["prompt"]) == set(stamped[stamped["ts"] >= now - timedelta(days=7)]["prompt"])
    assert len(cal.recent_traffic(logs, limit=5)) == 5
    with pytest.raises(ContractError, match="no logged requests"):
        cal.recent_traffic(stamped, days=7, now=now + timedelta(days=365))


def test_cli(router, data, tmp_path, routerbench_dir):
    router_dir = router.save(tmp_path / "router")
    files = [str(p) for p in sorted(routerbench_dir.glob("mbpp_test.csv.gz"))]
    runner = CliRunner()
    out = tmp_path / "curve.json"
    res = runner.invoke(app, ["calibrate", "--router", str(router_dir), "--data", *files,
                              "--target-cost-per-1k-requests", "1.0", "--json", str(out)])
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    assert line["feasible"] and line["chosen"]["cost_per_1k_requests"]["mean"] <= 1.0
    assert len(json.loads(out.read_text())["curve"]) > 100
    res = runner.invoke(app, ["calibrate", "--router", str(router_dir), "--data", *files,
                              "--target-cost-per-1k-requests", "1e-9"])
    assert res.exit_code == 1 and not json.loads(res.output.strip().splitlines()[-1])["feasible"]
    res = runner.invoke(app, ["calibrate", "--router", str(router_dir), "--data", *files, "--target-share", "x"])
    assert res.exit_code != 0 and "MODEL=SHARE" in res.output
    res = runner.invoke(app, ["calibrate", "--router", str(router_dir), "--data", *files])
    assert res.exit_code != 0 and "exactly one target" in res.output
