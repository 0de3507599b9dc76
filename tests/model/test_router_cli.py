"""`mixllm train` and `mixllm route`: the stable command-line contract scripts depend on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mixllm.cli import app
from mixllm.data import load_routerbench

pytestmark = pytest.mark.model


def test_route_streams_json_lines_and_reports_bad_lines_in_place(trained_router_dir):
    lines = [json.dumps({"id": "a", "prompt": "Write a python function that sorts a list."}),
             "{not json",
             json.dumps({"id": 7, "prompt": "The trophy didn't fit in the suitcase because _ was too big."}),
             json.dumps({"id": "c"}),
             ""]
    result = CliRunner().invoke(app, ["route", "--router", str(trained_router_dir), "--wtp", "0.0001,10"],
                                input="\n".join(lines) + "\n")
    assert result.exit_code == 1, result.output
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert [(o.get("id"), o.get("wtp"), "error" in o) for o in out] == [
        ("a", 0.0001, False), ("a", 10.0, False), (None, None, True), (7, 0.0001, False), (7, 10.0, False),
        (None, None, True)]
    assert out[2]["line"] == 2 and "line 2" in out[2]["error"] and out[5]["line"] == 4
    good = out[0]
    assert good["router_version"] and len(good["candidates"]) == 11
    assert good["model"] in {c["model"] for c in good["candidates"]}
    cheap, dear = [o for o in out if o.get("id") == 7]
    cost = {c["model"]: c["predicted_cost_usd"] for c in cheap["candidates"]}
    assert cost[cheap["model"]] <= cost[dear["model"]]


def test_route_rejects_bad_options(trained_router_dir):
    runner = CliRunner()
    bad_wtp = runner.invoke(app, ["route", "--router", str(trained_router_dir), "--wtp", "abc"], input="")
    assert bad_wtp.exit_code != 0
    unknown = runner.invoke(app, ["route", "--router", str(trained_router_dir), "--wtp", "1",
                                  "--allowed-models", "gpt-17"], input="")
    assert unknown.exit_code != 0 and "gpt-17" in str(unknown.exception)


def test_train_writes_a_loadable_artifact(tmp_path, routerbench_dir):
    log = load_routerbench(routerbench_dir, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(6)["query_id"]
    path = tmp_path / "log.csv"
    log[log["query_id"].isin(keep)].to_csv(path, index=False)
    out = tmp_path / "router"
    result = CliRunner().invoke(app, ["train", "--data", str(path), "--out", str(out), "--no-tag-enhanced",
                                      "--seed", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["queries"] == 18 and len(summary["models"]) == 11
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["router_version"] == summary["router_version"]
    assert manifest["tag_enhanced"] is False and manifest["seed"] == 3


def test_train_any_registered_router_and_evaluate_it_through_load_router(tmp_path, routerbench_dir):
    """`mixllm train --router NAME` trains and saves any registered router; `mixllm evaluate --router DIR` loads it
    through `load_router` (the manifest names the class) and replays it like the MixLLM router."""
    from mixllm.routers.baselines import KNNRouter
    from mixllm.routers.registry import load_router

    log = load_routerbench(routerbench_dir, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(8)["query_id"]
    train = tmp_path / "train.csv"
    log[log["query_id"].isin(keep)].to_csv(train, index=False)
    test_log = load_routerbench(routerbench_dir, "test")
    test = tmp_path / "test.csv"
    test_log[test_log["query_id"].isin(test_log.drop_duplicates("query_id").groupby("task").head(5)["query_id"])] \
        .to_csv(test, index=False)
    runner = CliRunner()
    out = tmp_path / "knn"
    result = runner.invoke(app, ["train", "--router", "knn", "--option", "k=5", "--data", str(train), "--out",
                                 str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["router"] == "knn" and summary["queries"] == 24 and len(summary["models"]) == 11
    router = load_router(out)
    assert isinstance(router, KNNRouter) and router.k == 5
    decision = router.route(["Write a python function that sorts a list."], 1.0)[0]
    assert decision.model in router.models and decision.router_version == summary["router_version"]
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["evaluate", "--router", str(out), "--data", str(test), "--json", str(report),
                                 "--baselines", "oracle"])
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["main"] == "router" and doc["policies"]["router"]["metrics"]["aiq"] <= \
        doc["policies"]["oracle"]["metrics"]["aiq"] + 1e-9
    bad = runner.invoke(app, ["train", "--router", "magic", "--data", str(train), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "registered routers" in str(bad.exception) + bad.output
