"""Shared fixtures: every test runs with its own mixllm home, Prefect home and MLflow store (no state leaks)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ROUTERBENCH_DIR = REPO_ROOT / "data" / "routerbench"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MIXLLM_HOME per test so stores, registries and caches never leak between tests."""
    home = tmp_path / "mixllm-home"
    monkeypatch.setenv("MIXLLM_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def routerbench_dir() -> Path:
    return ROUTERBENCH_DIR


@pytest.fixture(scope="session")
def trained_router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real router (real encoder, 1 fine-tuning epoch, real LightGBM) on 14 bundled train queries per task.

    Saved once per session; tests that need a router call `MixLLMRouter.load(trained_router_dir)` (a fresh copy,
    so updates in one test never leak into another). Training takes ~20-40 s on 2 cores.
    """
    from mixllm.data import load_routerbench
    from mixllm.router import MixLLMRouter, RouterConfig

    base = tmp_path_factory.mktemp("trained-router")
    log = load_routerbench(ROUTERBENCH_DIR, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(14)["query_id"]
    log = log[log["query_id"].isin(keep)]
    config = RouterConfig(representation="adapter", epochs=1, batch_size=16, progress=False, cache_dir=base / "cache",
                          seed=0)  # the tag-enhanced option (the default is plain MiniLM since issue 14)
    return MixLLMRouter(config).fit(log).save(base / "router")


@pytest.fixture(scope="session")
def challenger_dir(trained_router_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained router under another version stamp (`challenger-test`): what the log records tells a canary's or
    a shadow's arms apart."""
    dst = tmp_path_factory.mktemp("challenger") / "router"
    shutil.copytree(trained_router_dir, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["router_version"] = "challenger-test"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst
