"""What a pipeline registration leaves in MLflow for a person: no warnings while logging, a models-from-code pyfunc
with a signature and an input example, and a version page that states the gate verdict and headline figures and
links the frontier plot and the per-task table. Real stages (evaluate, gate, register, promote) on the session's
tiny trained router and a small held-out slice; a real SQLite MLflow."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from contextlib import redirect_stderr
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from mixllm import pipeline as P
from mixllm.config import get_settings
from mixllm.data import load_routerbench
from mixllm.model_card import PER_TASK_CSV, per_task_table
from mixllm.registry import CHAMPION, Registry
from mixllm.router import MixLLMRouter

pytestmark = pytest.mark.integration

PROMPTS = ["Which gas do plants absorb from the air?", "Write a python function that reverses a string."]


def _slice(routerbench_dir: Path, split: str, per_task: int) -> pd.DataFrame:
    log = load_routerbench(routerbench_dir, split)
    keep = log.drop_duplicates("query_id").groupby("task").head(per_task)["query_id"]
    return log[log["query_id"].isin(keep)].reset_index(drop=True)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, trained_router_dir: Path, routerbench_dir: Path):
    """evaluate -> gate -> register -> promote as the nightly flow runs them, with every Python warning, every
    record of MLflow's loggers at WARNING or above (whatever stream its handlers hold) and everything written to
    sys.stderr during the register and promote steps captured."""
    settings = get_settings(home=tmp_path_factory.mktemp("records-home"))
    config = P.PipelineConfig(baselines=("single", "random", "task_prior"))
    train, test = _slice(routerbench_dir, "train", 10), _slice(routerbench_dir, "test", 8)
    assert any(pd.api.types.is_integer_dtype(t) for t in train.dtypes), "the snapshot should have integer columns"
    report, metrics = P.evaluate_router(trained_router_dir, test, config, settings, train=train)
    verdict = P.gate(metrics, None, config)

    handler_stream = io.StringIO()
    handler = logging.StreamHandler(handler_stream)
    handler.setLevel(logging.WARNING)
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.addHandler(handler)
    err = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, redirect_stderr(err):
            # The filters of a plain `python`/`mixllm` process (not pytest's, which also show deprecations):
            # what a pipeline run would print.
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            version = P.register(trained_router_dir, report, metrics, "d" * 64, train, config, settings, verdict,
                                 None, "records-test")
            P.promote(version, verdict, settings)
    finally:
        mlflow_logger.removeHandler(handler)
    return {"settings": settings, "version": version, "report": report, "metrics": metrics, "verdict": verdict,
            "warnings": [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught],
            "log": handler_stream.getvalue(), "stderr": err.getvalue(), "tasks": sorted(test["task"].unique())}


def test_registration_emits_no_warning(registered) -> None:
    assert registered["warnings"] == [], "\n".join(registered["warnings"])
    assert registered["log"] == ""
    assert not [ln for ln in registered["stderr"].splitlines() if "warn" in ln.lower()], registered["stderr"]


def test_version_is_a_models_from_code_pyfunc_with_signature_and_example(registered) -> None:
    reg = Registry(registered["settings"])
    model_dir = reg.router_dir(registered["version"]).parent.parent  # <model>/artifacts/<router dir>
    meta = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    pyfunc = meta["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (model_dir / Path(pyfunc["model_code_path"]).name).is_file() and "python_model" not in pyfunc
    assert "prompt" in meta["signature"]["inputs"] and "willingness_to_pay" in meta["signature"]["params"]
    example = json.loads((model_dir / meta["saved_input_example_info"]["artifact_path"]).read_text(encoding="utf-8"))
    assert example["inputs"]["columns"] == ["prompt"] and len(example["inputs"]["data"]) > 0
    assert example["params"] == {"willingness_to_pay": registered["settings"].default_willingness_to_pay}
    reqs = (model_dir / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^mlflow==\d", reqs, re.M) and re.search(r"^lightgbm==\d", reqs, re.M)


def test_champion_loads_through_the_registry_and_mlflow(registered, trained_router_dir: Path) -> None:
    reg = Registry(registered["settings"])
    original = MixLLMRouter.load(trained_router_dir)
    assert reg.version_for(CHAMPION) == registered["version"]
    assert reg.load_router(CHAMPION).version == original.version
    mlflow.set_registry_uri(reg.settings.registry_uri)
    out = mlflow.pyfunc.load_model(f"models:/{reg.name}@{CHAMPION}").predict(
        pd.DataFrame({"prompt": PROMPTS}), params={"willingness_to_pay": 1000.0})
    assert out["model"].tolist() == [d.model for d in original.route(PROMPTS, 1000.0)]


def test_version_page_states_verdict_figures_and_links_the_evaluation(registered) -> None:
    reg = Registry(registered["settings"])
    mv = reg.client.get_model_version(reg.name, registered["version"])
    text, metrics, verdict = mv.description, registered["metrics"], registered["verdict"]
    assert text.startswith(f"**Gate: {'passed' if verdict.passed else 'failed'}**: {verdict.reason}\n")
    assert f"| {metrics['aiq']:.4f} |" in text
    assert f"| {100 * metrics['quality_at_25pct_cost']:.1f}% |" in text
    assert f"| {metrics['default_wtp/cost_usd']:.6f} |" in text
    table = per_task_table(registered["report"].summary)
    assert sorted(table.index) == registered["tasks"]
    for task, row in table.iterrows():
        assert f"| {task} | {row['aiq']:.4f} |" in text
    logged = {a.path for a in reg.client.list_artifacts(mv.run_id, "evaluation")}
    linked = set(re.findall(rf"#/experiments/\d+/runs/{mv.run_id}/artifacts/([\w/.]+)\)", text))
    assert linked == {"evaluation/frontier.png", PER_TASK_CSV} and linked <= logged
    assert f"get-artifact?path=evaluation%2Ffrontier.png&run_uuid={mv.run_id}" in text
    csv = reg.client.download_artifacts(mv.run_id, PER_TASK_CSV, str(registered["settings"].home))
    pd.testing.assert_frame_equal(pd.read_csv(csv, index_col="task"), table, check_exact=False, rtol=1e-9)
