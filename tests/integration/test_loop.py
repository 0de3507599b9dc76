"""The closed-loop benchmark in its smallest configuration, so the loop cannot rot.

Real components end to end: `mixllm pipeline run` (Prefect ephemeral API, SQLite store and MLflow in a fresh
home) trains night 0 on a seed, `mixllm serve` routes two simulated days over HTTP, simulated users rate a share of
the answers through /feedback, night 1 retrains on the store, and the service follows the new champion.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_loop", REPO / "bench" / "loop.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("loop-out")
    work = tmp_path_factory.mktemp("loop-work")
    result = _bench().main(["--quick", "--scenario", "stationary", "--no-write", "--out", str(out),
                            "--work", str(work)])
    return result, out


def test_every_query_of_every_day_was_routed_and_scored(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    days = result["days"]
    assert [d["day"] for d in days] == [1, 2]
    for d in days:
        assert d["queries"] == 40 and len(d["util_per_query"]["served"]) == 40
        assert sum(d["share"].values()) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 < d["labelled_share"] < 1.0  # users rated some answers, not all (30% of 40)
        for who in ("served", "seed", "full"):
            assert math.isfinite(d[who]["utility"]) and 0.0 < d[who]["relative_cost"]
        assert d["regret"] == pytest.approx(d["full"]["utility"] - d["served"]["utility"])


def test_nights_ran_the_real_pipeline_and_the_service_followed_the_champion(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    nights = result["nights"]
    assert [n["night"] for n in nights] == [0, 1]
    assert [n["version"] for n in nights] == ["1", "2"]  # each night registered a new version
    assert nights[0]["champion"] == "1"
    assert result["days"][0]["versions"] == ["1"]
    # day 2 is served by whatever night 1 left as champion (promoted or not), and only by it
    assert result["days"][1]["versions"] == [nights[1]["champion"]]
    for n in nights:
        assert n["seconds"] > 0 and {"champion", "seed", "full"} <= set(n["test"])


def test_feedback_reached_the_store(run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    result, _ = run
    from mixllm.store import Store

    home = Path(result["work"]) / "home"
    store = Store(f"sqlite:///{home / 'store.db'}")
    try:
        feedback = store.feedback()
    finally:
        store.dispose()
    rated_day1 = round(result["days"][0]["labelled_share"] * result["days"][0]["queries"])
    assert len(feedback) >= rated_day1 > 0


def test_results_written(run: tuple[dict[str, Any], Path]) -> None:
    _, out = run
    doc = json.loads((out / "loop.json").read_text())
    assert "stationary" in doc["scenarios"]
    assert (out / "loop.png").stat().st_size > 1000
