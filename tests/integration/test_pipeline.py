"""The nightly flow for real (Prefect test harness, SQLite MLflow, real router, real GX) on a small slice.

One module, one mixllm home, in order: first run -> version 1 promoted and packaged; second run on the same data ->
version 2 with a stated gate verdict; a run on corrupted data stops at validation and leaves the champion alone
(also through the CLI's entry point, as a user sees it); `mixllm promote` / `mixllm rollback` move the champion.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from mixllm.config import get_settings
from mixllm.exceptions import ContractError
from mixllm.registry import CHAMPION, Registry
from mixllm.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SMALL: dict[str, Any] = {
    "max_train_queries_per_task": 20,
    "max_test_queries_per_task": 15,
    "router": {"epochs": 1, "progress": False, "predictor": {"n_estimators": 30, "min_child_samples": 5}},
}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Module-wide mixllm home + Prefect harness (temporary API and database) + what the runs returned."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("pipeline-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        with prefect_test_harness(server_startup_timeout=120):
            yield {"home": home, "runs": []}


@pytest.fixture
def home(state: dict[str, Any], isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test of this module shares one mixllm home (overrides the per-test one from tests/conftest.py)."""
    monkeypatch.setenv("MIXLLM_HOME", str(state["home"]))
    return state["home"]


def run_nightly(**overrides: Any) -> dict[str, Any]:
    from mixllm_flows.nightly import nightly

    return nightly(overrides={**SMALL, **overrides})


def test_first_run_registers_and_promotes_version_1(state: dict[str, Any], home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run's temporary folders go (same process)
    out = run_nightly()
    left = [p.name for p in scratch.iterdir() if p.name.startswith("mixllm-")]  # not torch's compile cache
    assert left == [], f"the run left its temporary folders behind: {left}"
    state["runs"].append(out)
    assert out["version"] == "1" and out["promoted"] is True, out
    assert out["champion_before"] is None and out["champion"] == "1"
    assert "no champion yet" in out["gate_reason"]
    reg = Registry(get_settings())
    (row,) = reg.versions()
    assert row["aliases"] == ["champion"]
    assert row["tags"]["gate_verdict"] == "passed"
    assert row["tags"]["snapshot_digest"] == out["snapshot_digest"]
    for metric in ("aiq", "quality_at_25pct_cost", "default_wtp/quality", "baseline/random/aiq"):
        assert metric in row["metrics"], metric
    # per-stage wall seconds, in the result (bench/scale.py reads them) and on the version's MLflow run
    stages = ("ingest", "snapshot", "encode", "representation", "predictors", "evaluation", "registry", "package")
    assert set(out["timings"]) == {*stages, "total"}, out["timings"]
    assert all(s > 0 for s in out["timings"].values()) and sum(out["timings"][s] for s in stages) <= \
        out["timings"]["total"]
    logged = reg.client.get_run(row["run_id"]).data.metrics
    assert {f"timing/{s}_s" for s in stages} <= set(logged), logged
    assert any(k.startswith("task/") for k in row["metrics"])
    run = reg.client.get_run(row["run_id"])
    assert out["snapshot_digest"][:10] in run.info.run_name
    assert run.inputs.dataset_inputs[0].dataset.digest == out["snapshot_digest"][:36]
    arts = {a.path for a in reg.client.list_artifacts(row["run_id"], "evaluation")}
    assert "evaluation/frontier.png" in arts and "evaluation/evaluation.json" in arts
    top = {a.path for a in reg.client.list_artifacts(row["run_id"])}
    assert {"catalogue.json", "router_manifest"} <= top, top
    # the smoke test ran in-process (no service configured) and said so; packaging said what it did
    assert "no service URL configured" in out["deploy"]
    assert "smoke test (in-process" in out["smoke"] and "version 1" in out["smoke"]
    if (REPO / "bento" / "bentofile.yaml").is_file():
        assert out["package"].startswith("built Bento mixllm-router:v1"), out["package"]
        bento = state["home"] / "bentoml" / "bentos" / "mixllm-router" / "v1"
        src = bento / "src"
        assert (src / "mixllm_bento" / "service.py").is_file() and (src / "mixllm" / "router.py").is_file()
        assert (src / "mixllm" / "defaults" / "contracts" / "interaction_log.json").is_file()
        assert "mixllm_bento.service:RouterService" in (bento / "bento.yaml").read_text()
        # The Bento carries the champion it was built for: it serves exactly that version without a registry.
        bundled = json.loads((src / "champion_router" / "manifest.json").read_text())
        registered = json.loads((reg.router_dir("1") / "manifest.json").read_text())
        assert bundled["router_version"] == registered["router_version"]
    else:
        assert "bentofile.yaml not found" in out["package"]
    # the flow run is named after the date and the data digest
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = [r.name for r in client.read_flow_runs()]
    assert any(n.startswith("nightly-") and n.endswith(out["snapshot_digest"][:10]) for n in names), names
    assert "deliver-v1" in names, names  # package -> deploy -> smoke ran as the shared delivery subflow
    # the training rows are exactly the snapshot (20 queries per task, all their rows)
    assert Store(get_settings().store_url).logs()["query_id"].nunique() > 60


def test_second_run_registers_version_2_and_the_gate_states_why(state: dict[str, Any], home: Path) -> None:
    first = state["runs"][0]
    out = run_nightly()
    state["runs"].append(out)
    assert out["version"] == "2"
    assert out["snapshot_digest"] == first["snapshot_digest"]  # same data, same rows: re-ingest is a no-op
    assert out["champion_before"] == "1"
    assert out["gate_reason"], "the gate must state its reason"
    # version 1's own figures were stored when it was registered: night 2 does not evaluate the champion again,
    # and the figures it compares with are the ones version 1 was registered with
    assert out["champion_evaluation"] == "cached"
    metrics = {r["version"]: r["metrics"] for r in Registry(get_settings()).versions()}
    assert metrics["2"]["champion/aiq"] == metrics["1"]["aiq"]
    tags = {r["version"]: r["tags"] for r in Registry(get_settings()).versions()}
    assert tags["2"]["compared_with_champion"] == "1"
    assert tags["2"]["gate_verdict"] == ("passed" if out["gate_passed"] else "failed")
    assert tags["2"]["gate_reason"] == out["gate_reason"][:4900]
    expected = "2" if out["gate_passed"] else "1"
    assert Registry(get_settings()).version_for(CHAMPION) == expected
    if not out["gate_passed"]:
        assert out["message"].startswith("version 2 registered, not promoted: ")


def _corrupt(src: Path, dst: Path) -> Path:
    """A RouterBench file whose quality cells are out of range and half its prompts empty."""
    wide = pd.read_csv(src).head(40)
    models = [c.removesuffix("|total_cost") for c in wide.columns if c.endswith("|total_cost")]
    wide[models[0]] = 7.0
    wide.loc[wide.index[::2], "prompt"] = "[]"
    with gzip.open(dst, "wt") as fh:
        wide.to_csv(fh, index=False)
    return dst


def test_corrupted_data_stops_at_validation_and_champion_is_untouched(state: dict[str, Any], home: Path,
                                                                       tmp_path: Path) -> None:
    bad = _corrupt(REPO / "data" / "routerbench" / "mbpp_train.csv.gz", tmp_path / "corrupt_train.csv.gz")
    reg = Registry(get_settings())
    before_champion, before_n = reg.version_for(CHAMPION), len(reg.versions())
    rows_before = len(Store(get_settings().store_url).logs())
    with pytest.raises(ContractError, match="fail the log contract") as err:
        run_nightly(landing=[str(bad)], on_contract_failure="stop")
    assert "corrupt_train.csv.gz" in str(err.value) and "policy is 'stop'" in str(err.value)
    assert reg.version_for(CHAMPION) == before_champion and len(reg.versions()) == before_n
    assert len(Store(get_settings().store_url).logs()) == rows_before  # nothing from the bad file landed


def test_cli_pipeline_run_reports_a_contract_stop_in_one_line(home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """What `mixllm pipeline run` prints (its entry point, `mixllm_flows.nightly.main`): exit 2, one clear line.

    In-process on the module's Prefect harness; the CLI's own subprocess is exercised by the servers tier."""
    from mixllm_flows.nightly import main

    bad = _corrupt(REPO / "data" / "routerbench" / "mbpp_train.csv.gz", tmp_path / "corrupt_train.csv.gz")
    monkeypatch.setenv("MIXLLM_PIPELINE_LANDING", json.dumps([str(bad)]))
    monkeypatch.setenv("MIXLLM_PIPELINE_ON_CONTRACT_FAILURE", "stop")
    before = Registry(get_settings()).version_for(CHAMPION)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "pipeline stopped:" in err and "fail the log contract" in err and "champion untouched" in err, err
    assert Registry(get_settings()).version_for(CHAMPION) == before


def test_quarantine_policy_stops_when_too_much_of_a_file_is_bad(home: Path, tmp_path: Path) -> None:
    from mixllm.pipeline import check_landing, load_pipeline_config

    bad = _corrupt(REPO / "data" / "routerbench" / "mbpp_train.csv.gz", tmp_path / "corrupt_train.csv.gz")
    with pytest.raises(ContractError, match="above max_quarantine_fraction"):
        check_landing(bad, load_pipeline_config(on_contract_failure="quarantine"))
    ok = check_landing(bad, load_pipeline_config(on_contract_failure="quarantine", max_quarantine_fraction=1.0))
    assert ok.quarantined > 0 and ok.reasons  # kept with reasons, for the store's quarantine


def test_cli_versions_promote_and_rollback(state: dict[str, Any], home: Path) -> None:
    from mixllm.cli import app

    runner = CliRunner()
    reg = Registry(get_settings())
    if reg.version_for(CHAMPION) != "2":
        r = runner.invoke(app, ["promote", "2", "--reason", "test promotion", "--who", "tester"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["rollback", "--reason", "bad answers", "--who", "tester"])
    assert r.exit_code == 0, r.output
    assert "version 2 -> 1" in r.output
    assert reg.version_for(CHAMPION) == "1"
    tags = {v["version"]: v["tags"] for v in reg.versions()}
    assert tags["1"]["rolled_back_by"] == "tester" and tags["1"]["rollback_reason"] == "bad answers"
    r = runner.invoke(app, ["versions"])
    assert r.exit_code == 0 and "champion" in r.output and "aiq" in r.output
    r = runner.invoke(app, ["rollback", "--to", "99"])
    assert r.exit_code != 0


def test_promote_and_rollback_flows_ship_through_the_one_delivery_path(home: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The promote flow's failed deploy rolls champion back (delivery's rollback); the rollback flow's failed deploy
    is only reported (undoing a rollback would restore the version a person took out)."""
    from mixllm_flows.promote import promote
    from mixllm_flows.rollback import rollback

    monkeypatch.setenv("MIXLLM_PIPELINE_SERVICE_URL", "http://127.0.0.1:9")  # nothing listens: every deploy fails
    monkeypatch.setenv("MIXLLM_PIPELINE_BUILD_BENTO", "false")
    reg = Registry(get_settings())
    assert reg.version_for(CHAMPION) == "1"  # left by the CLI test above
    out = promote("2", reason="flow test", who="tester")
    assert out["delivered"] is False and "unreachable" in out["deploy"], out
    assert out["rollback"].startswith("ROLLED BACK: champion moved from version 2 back to 1"), out
    assert out["champion"] == "1" == reg.version_for(CHAMPION)
    assert "smoke" not in out  # delivery stops at the first failed stage
    out = rollback(to="2", reason="flow test rollback", who="tester")
    assert out["champion_before"] == "1" and out["delivered"] is False and "rollback" not in out, out
    assert out["champion"] == "2" == reg.version_for(CHAMPION)
