"""The canary against a real registry (SQLite MLflow) and a real store: labelled decisions of each arm, found by
the router stamps of the champion and challenger versions, decide promote (alias moved) or roll back (challenger
alias removed), with the evidence in the version's tags; the Prefect flow does the same on an ephemeral API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from mixllm import canary as C
from mixllm.config import get_settings
from mixllm.registry import CHALLENGER, CHAMPION, Registry
from mixllm.schemas import LogRecord
from mixllm.serving.holder import RegistrySource
from mixllm.store import Store

pytestmark = pytest.mark.integration
CFG = C.CanaryConfig(min_labels=30)


def _setup(trained_router_dir: Path, challenger_dir: Path, champion_q: float, challenger_q: float, n: int = 80):
    """Champion v1 and challenger v2 registered; n labelled decisions per arm in the store since the start."""
    settings = get_settings()
    reg = Registry(settings)
    v1 = reg.log_candidate(trained_router_dir, None, "a" * 64)
    reg.promote(v1, reason="canary test", who="test")
    v2 = reg.log_candidate(challenger_dir, None, "b" * 64)  # registration sets the challenger alias
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    reg.set_tags(v2, {C.STARTED_TAG: start.isoformat()})
    rng = np.random.default_rng(0)
    stamps = {"champion": json.loads((trained_router_dir / "manifest.json").read_text())["router_version"],
              "challenger": "challenger-test"}
    rows = []
    for arm, q in (("champion", champion_q), ("challenger", challenger_q)):
        for i in range(n):
            ts = start + timedelta(minutes=1 + i % 100)
            common = {"query_id": f"{arm}-{i}", "prompt": f"question {i}", "model": "gpt-4-1106-preview", "ts": ts,
                      "router_version": stamps[arm], "propensity": 1.0}
            rows += [LogRecord(**common), LogRecord(**common, quality=float(rng.random() < q), cost_usd=0.01)]
    store = Store(settings.store_url)
    store.append_logs(rows)
    return reg, store, v1, v2


def test_a_worse_challenger_is_rolled_back_and_its_alias_removed(trained_router_dir, challenger_dir):
    reg, store, v1, v2 = _setup(trained_router_dir, challenger_dir, champion_q=0.8, challenger_q=0.4)
    from typer.testing import CliRunner

    from mixllm.cli import app

    shown = CliRunner().invoke(app, ["canary", "check", "--store-url", store.url])  # reports, changes nothing
    assert shown.exit_code == 0 and json.loads(shown.output.strip().splitlines()[-1])["verdict"] == "rollback"
    assert reg.version_for(CHALLENGER) == v2
    source = RegistrySource(reg, CHALLENGER)  # what the service polls: the version and its tags in one call
    assert source.current_ref() == v2 and C.CLEARED_TAG not in source.tags
    reg.set_tags(v2, {C.CLEARED_TAG: datetime.now(timezone.utc).isoformat()})  # as apply() does at a passed look
    assert source.current_ref() == v2 and C.CLEARED_TAG in source.tags  # the service now takes the cleared share
    decision = C.evaluate(reg, store, CFG, wtp=100.0)
    assert decision.verdict == "rollback", decision.reason
    assert (decision.champion.n, decision.challenger.n) == (80, 80) and decision.served == 80
    assert 30 < decision.budget < 45  # 2% of a day of 160 requests in 2 h
    assert (decision.champion_version, decision.challenger_version) == (v1, v2)
    C.apply(reg, decision, who="test")
    assert reg.version_for(CHALLENGER) is None and reg.version_for(CHAMPION) == v1
    tags = reg.client.get_model_version(reg.name, v2).tags
    assert tags["canary_verdict"] == "rollback" and json.loads(tags["canary_evidence"])["challenger"]["n"] == 80
    assert C.evaluate(reg, store, CFG, wtp=100.0).verdict == "idle"  # nothing left to decide


def test_a_better_challenger_is_promoted_by_the_flow(trained_router_dir, challenger_dir):
    from mixllm_flows.canary import canary

    reg, store, v1, v2 = _setup(trained_router_dir, challenger_dir, champion_q=0.4, challenger_q=0.9)
    assert canary(dry_run=True)["verdict"] == "promote" and reg.version_for(CHALLENGER) == v2  # decided only
    out = canary(deliver_promoted=False)  # no service to ship to here; it follows the alias anyway
    assert out["verdict"] == "promote" and out["challenger_version"] == v2, out
    assert reg.version_for(CHAMPION) == v2 and reg.version_for(CHALLENGER) is None
    tags = reg.client.get_model_version(reg.name, v2).tags
    assert tags["canary_verdict"] == "promote" and tags["promoted_by"] == "prefect:mixllm-canary"
    run = reg.client.get_run(out["run_id"])
    assert run.data.tags["mixllm.run_kind"] == "canary" and run.data.metrics["canary/challenger_n"] == 80
