"""Pipeline and delivery stages one by one (no Prefect): typed config and its precedence, the packaged default
data, subsampling, what deploy and smoke test say when there is no service or it is unreachable, the Bento's pinned
requirements, and the automatic rollback's wording."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mixllm.config import get_settings
from mixllm.exceptions import ConfigError
from mixllm.delivery import deploy, package, pinned_requirements, rollback_after_failure, smoke_test
from mixllm.pipeline import PipelineConfig, load_pipeline_config, sample_data, subsample

pytestmark = pytest.mark.integration


def test_default_data_is_the_packaged_sample(repo_root: Path) -> None:
    cfg = PipelineConfig()
    landing, test = cfg.resolved_landing(), cfg.resolved_test_paths()
    assert [p.name for p in landing] == ["arc_challenge_train.csv.gz", "mbpp_train.csv.gz", "winogrande_train.csv.gz"]
    assert [p.name.replace("_test", "_train") for p in test] == [p.name for p in landing]
    assert all(p.parent == sample_data() and p.is_file() for p in landing + test)
    assert not sample_data().is_relative_to(repo_root / "data"), "the default must be package data, not the checkout's"
    assert (sample_data() / "README.md").read_text().count("MIT") >= 1  # attribution travels with the slice
    assert cfg.max_train_queries_per_task is None and cfg.on_contract_failure == "quarantine"


def test_precedence_env_then_file_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_PIPELINE_MAX_TRAIN_QUERIES_PER_TASK", "7")
    monkeypatch.setenv("MIXLLM_PIPELINE_ROUTER", '{"epochs": 0}')
    assert load_pipeline_config().max_train_queries_per_task == 7
    f = tmp_path / "p.yaml"
    f.write_text("max_train_queries_per_task: 9\nbuild_bento: false\n")
    cfg = load_pipeline_config(f)
    assert cfg.max_train_queries_per_task == 9 and cfg.build_bento is False and cfg.router == {"epochs": 0}
    assert load_pipeline_config(f, max_train_queries_per_task=3).max_train_queries_per_task == 3


@pytest.mark.parametrize("text", ["max_train_queries_per_task: -1\n", "no_such_field: 1\n",
                                  "on_contract_failure: ignore\n", "a: [\n"])
def test_invalid_config_is_a_config_error(tmp_path: Path, text: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        load_pipeline_config(f)


def test_subsample_keeps_whole_queries_per_task() -> None:
    df = pd.DataFrame({"query_id": [f"q{i // 3}" for i in range(60)], "model": ["a", "b", "c"] * 20,
                       "task": ["x"] * 30 + ["y"] * 30})
    out = subsample(df, 4, seed=1)
    assert out.groupby("task")["query_id"].nunique().tolist() == [4, 4]
    assert (out.groupby("query_id").size() == 3).all()
    assert subsample(df, 4, seed=1).equals(out)  # deterministic for a seed
    assert len(subsample(df, None, seed=1)) == 60


def test_without_a_service_deploy_says_skipped() -> None:
    r = deploy("1", get_settings(), PipelineConfig())
    assert r.ok and r.action == "skipped" and "no service URL configured" in r.message


def test_unreachable_service_fails_deploy_and_smoke_with_the_url() -> None:
    cfg = PipelineConfig(service_url="http://127.0.0.1:9", deploy_timeout_seconds=2)
    d = deploy("1", get_settings(), cfg)
    assert not d.ok and "127.0.0.1:9" in d.message and "unreachable" in d.message
    s = smoke_test("1", get_settings(), cfg)
    assert not s.ok and "unreachable" in s.message


def test_smoke_test_without_a_registered_champion_fails_clearly() -> None:
    r = smoke_test("1", get_settings(), PipelineConfig())
    assert not r.ok and r.action == "failed" and "version 1" in r.message


def test_missing_bentofile_is_reported_not_ignored(tmp_path: Path) -> None:
    r = package("1", get_settings(), PipelineConfig(bento_source=tmp_path))
    assert not r.ok and "bentofile.yaml not found" in r.message
    assert package("1", get_settings(), PipelineConfig(build_bento=False)).action == "skipped"


def test_automatic_rollback_without_history_says_so() -> None:
    msg = rollback_after_failure("1", "smoke failed", get_settings())
    assert msg.startswith("automatic rollback impossible") and "investigate" in msg


def test_bento_requirements_pin_the_installed_closure() -> None:
    from importlib import metadata

    pins = dict(line.split("==", 1) for line in pinned_requirements())
    for name in ("bentoml", "torch", "lightgbm", "sentence-transformers", "psycopg-binary", "huggingface-hub"):
        assert pins[name] == metadata.version(name), name  # direct, extra-selected and transitive dependencies
    assert "mixllm" not in pins and "pytest" not in pins  # its own code is copied in; dev extra not followed


@pytest.mark.parametrize(("fields", "message"), [
    ({"dask_address": "tcp://10.0.0.5:8786"}, "is set but runner='thread'"),
    ({"runner": "dask", "dask_address": "http://scheduler"}, "is not a scheduler address"),
    ({"runner": "ray"}, "runner"),
    ({"runner": "dask", "dask_workers": 0}, "dask_workers"),
])
def test_runner_settings_are_validated_at_construction(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(**fields)
    assert load_pipeline_config(runner="dask", dask_address="tcp://10.0.0.5:8786").dask_workers == 2
