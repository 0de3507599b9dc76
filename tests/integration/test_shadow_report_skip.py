"""`mixllm shadow report` after the canary has rolled the challenger back: its alias is gone, so the report shows the
shadow decisions, skips the off-policy estimate with a note instead of failing, and still logs its MLflow run (real
SQLite registry and store in the test's home)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixllm import canary as C
from mixllm import shadow
from mixllm.cli import app
from mixllm.config import get_settings
from mixllm.registry import CHALLENGER, Registry
from mixllm.store import Store

pytestmark = pytest.mark.integration


def _rows(n: int, champion: str, challenger: str) -> list[shadow.ShadowRecord]:
    now = datetime.now(timezone.utc)
    return [shadow.ShadowRecord(
        request_id=f"r{i}", ts=now - timedelta(minutes=i), decided_at=now, willingness_to_pay=100.0,
        champion_version=champion, challenger_version=challenger, champion_model="gpt-4-1106-preview",
        challenger_model="gpt-4-1106-preview" if i % 2 else "mistral-7b-chat", agree=bool(i % 2),
        champion_quality=0.8, champion_cost=0.01, challenger_quality=0.8 if i % 2 else 0.6,
        challenger_cost=0.01 if i % 2 else 0.001, challenger_on_champion_quality=0.8,
        challenger_on_champion_cost=0.01) for i in range(n)]


def test_report_after_a_rollback_skips_the_estimate_and_still_logs(trained_router_dir: Path,
                                                                  challenger_dir: Path) -> None:
    reg = Registry(get_settings())
    v1 = reg.log_candidate(trained_router_dir, None, "a" * 64)
    reg.promote(v1, reason="test", who="test")
    v2 = reg.log_candidate(challenger_dir, None, "b" * 64)
    empty = C.ArmStats(0, math.nan, math.nan)
    C.apply(reg, C.CanaryDecision("rollback", "worse (test)", empty, empty, champion_version=v1,
                                  challenger_version=v2), who="test")  # what the canary flow does
    assert reg.version_for(CHALLENGER) is None
    url = get_settings().store_url
    store = Store(url)
    shadow.append(store, _rows(6, "v-champ", "v-chal"))
    store.dispose()

    out = CliRunner().invoke(app, ["shadow", "report", "--store-url", url])
    assert out.exit_code == 0, out.output
    assert "off-policy estimate skipped: no version has the alias 'challenger'" in out.output
    assert "shadow decisions: 6" in out.output and "agreement: 50.0%" in out.output
    assert "mlflow run:" in out.output
    run_id = out.output.split("mlflow run:")[1].split()[0]
    run = reg.client.get_run(run_id)
    assert run.data.tags.get("challenger") == "v-chal" and "ope/n_labelled" not in run.data.metrics
