"""The model registry on a real SQLite MLflow: versions, aliases, promotion, rollback, tags, pyfunc loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from mixllm.config import get_settings
from mixllm.exceptions import ArtifactError, RegistryError
from mixllm.registry import CHALLENGER, CHAMPION, HISTORY_TAG, Registry
from mixllm.router import MixLLMRouter

pytestmark = pytest.mark.integration

PROMPTS = ["Which gas do plants absorb from the air?", "Write a python function that reverses a string.",
           "The trophy didn't fit in the suitcase because it was too big. What was too big?"]


class TinyReport:
    """The slice of EvaluationReport the registry reads (summary, json, markdown, plot)."""

    def __init__(self, aiq: float) -> None:
        self.summary = {"aiq": aiq, "task/arc/aiq": aiq - 0.1, "quality_at_25pct_cost": 0.5, "broken": float("nan")}

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary})

    def to_markdown(self) -> str:
        return "| metric | value |"

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        fig.savefig(path)
        plt.close(fig)
        return path


@pytest.fixture(scope="module")
def registry_with_two(tmp_path_factory: pytest.TempPathFactory, trained_router_dir: Path):
    """Two registered versions of the same router in a module-private MLflow (SQLite + local artifacts)."""
    home = tmp_path_factory.mktemp("registry-home")
    reg = Registry(get_settings(home=home))
    snap = pd.DataFrame({"query_id": ["q1", "q2"], "prompt": ["a", "b"], "model": ["m", "m"]})
    v1 = reg.log_candidate(trained_router_dir, TinyReport(0.8), "a" * 64, {"epochs": 1, "router": {"x": 1}},
                           snapshot=snap, tags={"gate_verdict": "passed"})
    v2 = reg.log_candidate(trained_router_dir, TinyReport(0.7), "b" * 64, {"epochs": 1})
    return reg, v1, v2


def test_versions_metrics_and_lineage_are_recorded(registry_with_two) -> None:
    reg, v1, v2 = registry_with_two
    assert (v1, v2) == ("1", "2")
    rows = {r["version"]: r for r in reg.versions()}
    assert rows["1"]["metrics"]["aiq"] == pytest.approx(0.8)
    assert rows["1"]["metrics"]["task/arc/aiq"] == pytest.approx(0.7)
    assert rows["1"]["tags"]["snapshot_digest"] == "a" * 64
    assert rows["1"]["tags"]["gate_verdict"] == "passed"
    run = reg.client.get_run(rows["1"]["run_id"])
    assert run.data.params["epochs"] == "1"
    assert json.loads(run.data.params["router"]) == {"x": 1}
    assert run.inputs.dataset_inputs[0].dataset.digest == ("a" * 64)[:36]
    arts = {a.path for a in reg.client.list_artifacts(rows["1"]["run_id"], "evaluation")}
    assert {"evaluation/frontier.png", "evaluation/evaluation.json", "evaluation/evaluation.md"} <= arts
    assert CHALLENGER in rows["2"]["aliases"] and reg.version_for(CHAMPION) is None


def test_promote_rollback_and_tags(registry_with_two) -> None:
    reg, v1, v2 = registry_with_two
    with pytest.raises(RegistryError, match="does not exist"):
        reg.promote("99", reason="typo", who="tester")
    reg.promote(v1, reason="first", who="alice")
    reg.promote(v2, reason="better", who="bob")
    assert reg.version_for(CHAMPION) == v2
    assert reg.version_for(CHALLENGER) is None  # the challenger became champion
    tags = {r["version"]: r["tags"] for r in reg.versions()}
    assert tags[v2]["promoted_by"] == "bob" and tags[v2]["promotion_reason"] == "better"
    assert tags[v2]["previous_champion"] == v1
    assert reg.rollback(reason="smoke test failed", who="carol") == v1
    assert reg.version_for(CHAMPION) == v1
    tags = {r["version"]: r["tags"] for r in reg.versions()}
    assert tags[v1]["rolled_back_by"] == "carol" and tags[v1]["rolled_back_from"] == v2
    assert tags[v2]["demotion_reason"] == "smoke test failed"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback(reason="again", who="carol")
    assert reg.rollback(to=v2, reason="it was fine", who="dave") == v2
    with pytest.raises(RegistryError, match="already the champion"):
        reg.rollback(to=v2, reason="noop", who="dave")
    assert json.loads(reg.client.get_registered_model(reg.name).tags[HISTORY_TAG]) == [v1, v2]


def test_router_dir_and_load_router_route_like_the_original(registry_with_two, trained_router_dir: Path) -> None:
    reg, v1, _ = registry_with_two
    original = MixLLMRouter.load(trained_router_dir)
    d = reg.router_dir(v1)
    assert reg.router_dir(v1) == d  # cached: second call does not download again
    loaded = reg.load_router(v1)
    assert loaded.version == original.version
    a, b = original.route(PROMPTS, 1000.0), loaded.route(PROMPTS, 1000.0)
    assert [x.model for x in a] == [x.model for x in b]
    np.testing.assert_allclose(original.predict(PROMPTS).quality, loaded.predict(PROMPTS).quality, rtol=1e-6)


def test_pyfunc_model_loads_with_the_mixllm_loader(registry_with_two, trained_router_dir: Path) -> None:
    reg, v1, _ = registry_with_two
    mlflow.set_registry_uri(reg.settings.registry_uri)
    model = mlflow.pyfunc.load_model(f"models:/{reg.name}/{v1}")
    out = model.predict(pd.DataFrame({"prompt": PROMPTS}), params={"willingness_to_pay": 1000.0})
    expected = [d.model for d in MixLLMRouter.load(trained_router_dir).route(PROMPTS, 1000.0)]
    assert out["model"].tolist() == expected
    assert set(out["router_version"]) == {MixLLMRouter.load(trained_router_dir).version}


def test_unknown_refs_and_broken_artifacts_are_clear_errors(registry_with_two, tmp_path: Path) -> None:
    reg, _, _ = registry_with_two
    with pytest.raises(RegistryError, match="alias 'nope'"):
        reg.router_dir("nope")
    with pytest.raises(ArtifactError, match="does not exist"):
        reg.log_candidate(tmp_path / "missing", None, "c" * 64)
    broken = tmp_path / "model"
    broken.mkdir()
    from mixllm.registry import _router_artifact_path

    with pytest.raises(ArtifactError, match="not a mixllm router model"):
        _router_artifact_path(broken)
    shutil.rmtree(broken)


def test_empty_registry_says_what_to_do(tmp_path: Path) -> None:
    reg = Registry(get_settings(home=tmp_path / "empty"))
    assert reg.versions() == []
    assert reg.version_for(CHAMPION) is None
    with pytest.raises(RegistryError, match="run the pipeline first"):
        reg.rollback(reason="x", who="y")
