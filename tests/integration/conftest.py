"""Fixtures for the `servers` tier: the real PostgreSQL-backed MLflow server and Prefect server from infra/.

The servers are started outside pytest by ``infra/services.sh up``, which also prints the variables read here
(``eval "$(infra/services.sh env)"``). Without them a `servers` test FAILS, saying how to start them, unless
``MIXLLM_SKIP_SERVERS=1`` is set explicitly (then it skips with that reason).

One registered model per test session (unique name, own experiment): reruns against long-lived servers never see
each other's versions. The session trains twice on a tiny slice (a few dozen queries per task, tiny router): once
with `mixllm pipeline run` in this process's environment, once as a hand-triggered run of the nightly deployment
executed by the work pool's worker; the two versions feed the UI and notebook tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
START_HINT = ("start the real servers first: `infra/services.sh up && eval \"$(infra/services.sh env)\"` "
              "(or set MIXLLM_SKIP_SERVERS=1 to skip the servers tier on purpose)")

# A tiny but real training: a few dozen queries per task, a small router, no Bento build.
SMALL_PIPELINE: dict[str, Any] = {
    "max_train_queries_per_task": 20,
    "max_test_queries_per_task": 15,
    "build_bento": False,
    "router": {"epochs": 1, "tag_enhanced": False, "progress": False,
               "predictor": {"n_estimators": 30, "min_child_samples": 5}},
}
NIGHTLY_CRON = "0 2 * * *"


@dataclass
class Servers:
    mlflow_url: str
    prefect_api_url: str
    work_pool: str
    pg_url: str | None
    model: str = field(default_factory=lambda: f"mixllm-router-it-{uuid.uuid4().hex[:8]}")

    @property
    def experiment(self) -> str:
        return self.model.replace("mixllm-router", "mixllm")

    def mixllm_env(self) -> dict[str, str]:
        """Variables that point mixllm at the servers and at this session's registered model."""
        return {
            "MIXLLM_TRACKING_URI": self.mlflow_url,
            "MIXLLM_REGISTRY_URI": self.mlflow_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MIXLLM_REGISTERED_MODEL": self.model,
            "MIXLLM_EXPERIMENT": self.experiment,
        }

    def pipeline_env(self) -> dict[str, str]:
        """`MIXLLM_PIPELINE_*` variables for the small training (pydantic-settings parses JSON for dict fields)."""
        return {f"MIXLLM_PIPELINE_{k.upper()}": json.dumps(v) if isinstance(v, (dict, list, bool)) else str(v)
                for k, v in SMALL_PIPELINE.items()}

    def mlflow_client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)


def _require(var: str) -> str:
    value = os.environ.get(var)
    if value:
        return value
    if os.environ.get("MIXLLM_SKIP_SERVERS") == "1":
        pytest.skip(f"MIXLLM_SKIP_SERVERS=1: servers tier skipped on purpose ({var} not set)")
    pytest.fail(f"{var} is not set: {START_HINT}", pytrace=False)


def _check(url: str, what: str) -> None:
    try:
        r = httpx.get(url, timeout=5)
        r.raise_for_status()
    except httpx.HTTPError as e:
        pytest.fail(f"{what} at {url} is not answering ({e}): {START_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def servers() -> Servers:
    """The running servers (URLs from `infra/services.sh env`), health-checked once per session."""
    s = Servers(mlflow_url=_require("MIXLLM_TEST_MLFLOW_URL").rstrip("/"),
                prefect_api_url=_require("MIXLLM_TEST_PREFECT_API_URL").rstrip("/"),
                work_pool=_require("MIXLLM_TEST_WORK_POOL"),
                pg_url=os.environ.get("MIXLLM_TEST_PG_URL"))
    _check(f"{s.mlflow_url}/health", "the MLflow server")
    _check(f"{s.prefect_api_url}/health", "the Prefect server")
    return s


@dataclass
class Prometheus:
    url: str
    targets: Path  # file_sd folder the server re-reads: a test adds <name>.json to have its service scraped


@pytest.fixture(scope="session")
def prometheus() -> Prometheus:
    """The Prometheus started by `infra/services.sh up` (rules from infra/prometheus/), health-checked."""
    p = Prometheus(url=_require("MIXLLM_TEST_PROMETHEUS_URL").rstrip("/"),
                   targets=Path(_require("MIXLLM_TEST_PROMETHEUS_TARGETS")))
    _check(f"{p.url}/-/ready", "Prometheus")
    if not p.targets.is_dir():
        pytest.fail(f"Prometheus targets folder {p.targets} does not exist: {START_HINT}", pytrace=False)
    return p


def run_cmd(cmd: list[str], env: dict[str, str], timeout: float = 900, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command from the repository root; on failure the assertion shows its output's tail."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def base_env(servers: Servers, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(servers.mixllm_env())
    env.update(servers.pipeline_env())
    env.update({"MIXLLM_HOME": str(home), "PREFECT_API_URL": servers.prefect_api_url,
                "PREFECT_HOME": str(home / "prefect"), "PYTHONUNBUFFERED": "1"})
    return env


@dataclass
class PipelineRun:
    version: str
    run_id: str
    seconds: float
    output: str
    champion_after: str | None  # the champion alias right after this run (later runs may move it)


@pytest.fixture(scope="session")
def first_run(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """`mixllm pipeline run` once against the PostgreSQL-backed MLflow server (flow run tracked by the Prefect
    server)."""
    home = tmp_path_factory.mktemp("pipeline-home")
    t0 = time.monotonic()
    proc = run_cmd([str(VENV_BIN / "mixllm"), "pipeline", "run"], base_env(servers, home))
    seconds = time.monotonic() - t0
    client = servers.mlflow_client()
    newest = max(client.search_model_versions(f"name='{servers.model}'"), key=lambda m: int(m.version))
    try:
        champion = str(client.get_model_version_by_alias(servers.model, "champion").version)
    except Exception:  # noqa: BLE001 - MlflowException when the alias is missing: the test says so
        champion = None
    return PipelineRun(version=str(newest.version), run_id=newest.run_id, seconds=seconds,
                       output=proc.stdout + proc.stderr, champion_after=champion)


def prefect_client(servers: Servers) -> Any:
    """A synchronous Prefect client bound to the test server, whatever PREFECT_API_URL this process had."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(servers.prefect_api_url)


FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


STALE_DEPLOYMENT_HOURS = 3  # a session's deployment older than this was left by a killed session


def _delete_stale_test_deployments(client: Any) -> None:
    """Delete `it-*` nightly deployments left by killed sessions: their active cron would otherwise hand the pool's
    worker a full-size run at 02:00 with a home that no longer exists."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    cutoff = datetime.now(timezone.utc) - timedelta(hours=STALE_DEPLOYMENT_HOURS)
    for dep in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["mixllm-nightly"])),
                                       deployment_filter=DeploymentFilter(name=DeploymentFilterName(like_="it-"))):
        if dep.name.startswith("it-") and dep.created and dep.created < cutoff:
            client.delete_deployment(dep.id)


@pytest.fixture(scope="session")
def nightly_run(servers: Servers, first_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`mixllm pipeline schedule` on the Prefect server, then one hand-triggered run of it, executed by the worker.

    The deployment is the project's own (prefect.yaml, default cron) under this session's own name, deleted at the
    end: a user's `nightly` deployment on the same server is never touched, and a nightly run of it (or a concurrency
    slot it holds) cannot hold this session's run back. Only this run gets the session's registered model, a private
    home and the small training, as flow-run job variables and parameters.
    """
    home = tmp_path_factory.mktemp("worker-home")
    env = base_env(servers, home)
    name = f"it-{servers.model.rsplit('-', 1)[-1]}"
    with prefect_client(servers) as client:
        _delete_stale_test_deployments(client)
    run_cmd([str(VENV_BIN / "mixllm"), "pipeline", "schedule", "--pool", servers.work_pool, "--cron", NIGHTLY_CRON,
             "--name", name], env, timeout=300)
    with prefect_client(servers) as client:
        deployment = client.read_deployment_by_name(f"mixllm-nightly/{name}")
        try:
            result = _run_to_the_end(servers, client, deployment, home)
        except BaseException:
            client.delete_deployment(deployment.id)
            raise
    yield result
    with prefect_client(servers) as client:
        client.delete_deployment(deployment.id)  # its scheduled runs and concurrency limit go with it


def _run_to_the_end(servers: Servers, client: Any, deployment: Any, home: Path) -> dict[str, Any]:
    """One hand-triggered run of the deployment by the pool's worker, waited for (its logs in the failure)."""
    flow_run = client.create_flow_run_from_deployment(
        deployment.id, parameters={"overrides": SMALL_PIPELINE},
        job_variables={"env": {**servers.mixllm_env(), "MIXLLM_HOME": str(home)}},
        name=f"it-{servers.model}")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        flow_run = client.read_flow_run(flow_run.id)
        if flow_run.state and flow_run.state.type.value in FINAL_STATES:
            break
        time.sleep(2)
    else:
        pytest.fail(f"flow run {flow_run.id} still {flow_run.state and flow_run.state.name} after 900 s: is the "
                    f"worker polling {servers.work_pool!r}? (infra/services.sh status / logs)", pytrace=False)
    logs = ""
    if not flow_run.state.is_completed():
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        records = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        logs = "\n".join(r.message for r in records[-40:])
    assert flow_run.state.is_completed(), f"nightly run ended {flow_run.state.type}: {flow_run.state.message}\n{logs}"
    versions = servers.mlflow_client().search_model_versions(f"name='{servers.model}'")
    newest = max(int(v.version) for v in versions)
    return {"deployment": deployment, "flow_run": flow_run, "cron": NIGHTLY_CRON, "version": str(newest)}
