"""`mixllm shadow report` and `mixllm drift` on a real store and the session's real router (no MLflow server: the
routers are given as directories and the runs are not logged): what an operator types, end to end."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mixllm import shadow
from mixllm.cli import app
from mixllm.data import ROUTERBENCH_TS, load_routerbench
from mixllm.schemas import LogRecord
from mixllm.store import Store

pytestmark = pytest.mark.integration


def _last_json(output: str) -> dict:
    """The command's JSON line (the encoder's loading bar goes to stderr, which the runner mixes in)."""
    line = output.strip().splitlines()[-1]
    return json.loads(line[line.index('{"'):])


def _shadow_rows(n: int) -> list[shadow.ShadowRecord]:
    now = datetime.now(timezone.utc)
    return [shadow.ShadowRecord(
        request_id=f"r{i}", ts=now - timedelta(minutes=i), decided_at=now, willingness_to_pay=100.0,
        champion_version="v-champ", challenger_version="v-chal", champion_model="gpt-4-1106-preview",
        challenger_model="gpt-4-1106-preview" if i % 4 else "mistral-7b-chat", agree=bool(i % 4),
        champion_quality=0.8, champion_cost=0.01, challenger_quality=0.8 if i % 4 else 0.7,
        challenger_cost=0.01 if i % 4 else 0.001, challenger_on_champion_quality=0.8,
        challenger_on_champion_cost=0.01) for i in range(n)]


def test_shadow_report_shows_agreement_deltas_and_the_off_policy_estimate(trained_router_dir: Path, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    shadow.append(store, _shadow_rows(8))
    shadow.append(store, _shadow_rows(8))  # a request id stored twice counts once
    now = datetime.now(timezone.utc)
    prompts = ["What is 2 + 2?", "Write a haiku about rain.", "Which planet is the Red Planet?"] * 4
    store.append_logs([LogRecord(query_id=f"q{i}", prompt=p, model="gpt-4-1106-preview", ts=now, quality=0.9,
                                 cost_usd=0.01, router_version="v-champ", propensity=0.9)
                       for i, p in enumerate(prompts)])
    out = CliRunner().invoke(app, ["shadow", "report", "--no-mlflow", "--store-url", url, "--champion-dir",
                                   str(trained_router_dir), "--challenger-dir", str(trained_router_dir), "--json",
                                   str(tmp_path / "shadow.json")])
    assert out.exit_code == 0, out.output
    assert "shadow decisions: 8" in out.output and "agreement: 75.0%" in out.output
    assert "mistral-7b-chat" in out.output and "off-policy (DR) on 12 labelled decisions" in out.output
    saved = json.loads((tmp_path / "shadow.json").read_text())
    assert saved["n"] == 8 and saved["ope"]["ope/n_labelled"] == 12.0
    assert saved["ope"]["ope/diff/dr"] == pytest.approx(0.0)  # the same router on both sides


def test_drift_cli_says_not_decided_then_drift_with_exit_code_1(trained_router_dir: Path, tmp_path,
                                                                routerbench_dir: Path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = tmp_path / "drift.yaml"
    config.write_text("min_requests: 40\nmax_sample: 80\npermutations: 200\n")
    args = ["drift", "--no-mlflow", "--router", str(trained_router_dir), "--store-url", url, "--config", str(config),
            "--report-dir", str(tmp_path / "report")]
    empty = CliRunner().invoke(app, args)
    assert empty.exit_code == 0 and _last_json(empty.output)["decided"] is False, empty.output
    train, test = load_routerbench(routerbench_dir, "train"), load_routerbench(routerbench_dir, "test")

    def queries(df: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
        keep = df[df["task"].isin(tasks)].drop_duplicates("query_id").groupby("task").head(60)["query_id"]
        return df[df["query_id"].isin(keep)]
    rows = pd.concat([queries(train, ["arc-challenge", "winogrande"]).assign(ts=ROUTERBENCH_TS),
                      queries(test, ["mbpp"]).assign(ts=datetime.now(timezone.utc) - timedelta(hours=1))])
    Store(url).append_logs(rows.astype(object).where(rows.notna(), None).to_dict("records"))
    drifted = CliRunner().invoke(app, args)
    assert drifted.exit_code == 1, drifted.output
    result = _last_json(drifted.output)
    assert result["drifted"] and any(r.startswith("embedding_mmd") for r in result["reasons"])
    assert (tmp_path / "report" / "drift.html").is_file()
