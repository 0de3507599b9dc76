"""The closed-loop canary in its smallest configuration (`bench/loop_canary.py --quick`), so it cannot rot.

Real components end to end: routers trained on the bundled RouterBench train log (one on a seed slice, one on a
slice with its labels flipped), registered in a fresh home's MLflow registry as `champion` and `challenger`,
`mixllm serve` with a canary share of sessions, simulated users over HTTP (/route with session ids, thumbs on
/feedback), and the real canary flow (Prefect ephemeral API) after every simulated 15 minutes, as of that simulated
time. The worse challenger must be rolled back by the flow, its alias removed, with the evidence on its version.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_loop_canary", REPO / "bench" / "loop_canary.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_worse_challenger_is_rolled_back_by_the_flow_in_the_closed_loop(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(("MIXLLM_", "PREFECT_"))]:
        monkeypatch.delenv(key)  # the bench sets its own per run
    try:
        result = _bench().main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    finally:  # what the bench put in the environment for its flow stays out of later tests
        os.environ.clear()
        os.environ.update(saved)
    (run,) = result["runs"]
    assert run["challenger"] == "worse" and run["verdict"] == "rollback", run["checks"][-1]
    assert run["challenger_requests"] > 0 and run["challenger_labels"] > 0
    assert run["true_utility"]["challenger"] < run["true_utility"]["champion"]  # the world agrees it is worse
    hours = [c["hour"] for c in run["checks"]]
    assert hours == [0.25 * (i + 1) for i in range(len(hours))] and run["hour"] == hours[-1] <= 6
    assert "exposure budget" in run["checks"][-1]["reason"] or "worse" in run["checks"][-1]["reason"]
    saved = json.loads((tmp_path / "out" / "loop_canary.json").read_text())
    assert saved["runs"][0]["verdict"] == "rollback" and "worse_rolled_back_before_2pct" in saved["bars"]

    from mixllm.config import get_settings
    from mixllm.registry import CHALLENGER, CHAMPION, Registry

    reg = Registry(get_settings(home=tmp_path / "work" / "run-worse-0" / "home"))
    assert reg.version_for(CHALLENGER) is None and reg.version_for(CHAMPION) == run["champion_version"]
    tags = reg.client.get_model_version(reg.name, run["challenger_version"]).tags
    assert tags["canary_verdict"] == "rollback" and json.loads(tags["canary_evidence"])["served"] > 0
