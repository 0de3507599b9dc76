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
