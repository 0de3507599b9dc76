"""The pipeline against the real servers from infra/: PostgreSQL-backed MLflow server, Prefect server + worker.

Needs ``infra/services.sh up`` and ``eval "$(infra/services.sh env)"`` (see tests/integration/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.integration, pytest.mark.servers]


def test_pipeline_registers_a_champion_on_the_postgres_backed_mlflow_server(servers, first_run):
    client = servers.mlflow_client()
    assert first_run.version == "1", "the session's registered model should start empty"
    assert first_run.champion_after == first_run.version, (
        f"the first version did not become champion (pipeline output tail):\n{first_run.output[-3000:]}")
    champion = client.get_model_version(servers.model, first_run.version)
    run = client.get_run(champion.run_id)
    assert run.data.metrics.get("aiq", 0) > 0, run.data.metrics
    # Artifacts went through the server's proxy into its artifact root, not to a local path of this process.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    files = {f.path for f in client.list_artifacts(champion.run_id, "evaluation")}
    assert "evaluation/frontier.png" in files, files
    # The registry really lives in PostgreSQL: the same version is a row of MLflow's tables there.
    if servers.pg_url:
        dsn = servers.pg_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("select version from model_versions where name = %s", (servers.model,)).fetchall()
            alias = conn.execute("select version from registered_model_aliases where name = %s and alias = %s",
                                 (servers.model, "champion")).fetchone()
        assert (int(first_run.version),) in rows
        assert alias is not None and (alias[0],) in rows


def test_nightly_deployment_has_its_cron_and_a_hand_triggered_run_completes_via_the_worker(
        servers, nightly_run):
    deployment, flow_run = nightly_run["deployment"], nightly_run["flow_run"]
    crons = [s.schedule.cron for s in deployment.schedules if getattr(s.schedule, "cron", None)]
    assert crons == [nightly_run["cron"]], f"expected exactly one cron schedule: {deployment.schedules}"
    assert all(s.active for s in deployment.schedules)
    assert deployment.work_pool_name == servers.work_pool
    assert flow_run.state.is_completed(), f"{flow_run.state.type}: {flow_run.state.message}"
    assert flow_run.work_pool_name == servers.work_pool
    assert flow_run.infrastructure_pid, "the run was not started by a worker (no infrastructure pid)"
    # The run registered a second version of this session's model on the MLflow server.
    versions = servers.mlflow_client().search_model_versions(f"name='{servers.model}'")
    assert nightly_run["version"] in {str(v.version) for v in versions}
    assert len(versions) >= 2


# ------------------------------------------------------------------------------ rollback with a live service ----
ADMIN_TOKEN = "servers-tier-admin-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, predicate, timeout: float = 120.0):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def live_service(servers, first_run, nightly_run, tmp_path_factory):
    """`mixllm serve` on this session's registered model at the MLflow server (polls the alias every second)."""
    home = tmp_path_factory.mktemp("service-home")
    env = {**os.environ, **servers.mixllm_env(), "MIXLLM_HOME": str(home), "MIXLLM_ADMIN_TOKEN": ADMIN_TOKEN,
           "MIXLLM_POLL_SECONDS": "1", "BENTOML_HOME": str(home / "bentoml")}
    env.pop("MIXLLM_ROUTER_DIR", None)
    url = f"http://127.0.0.1:{_free_port()}"
    log = open(home / "service.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(VENV_BIN / "mixllm"), "serve", "--port", url.rsplit(":", 1)[1]], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"service exited {proc.returncode}:\n{(home / 'service.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for("the service to be ready", ready, 300)
        yield {"url": url, "env": env}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def run_cmd(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}"
                                  f"\n{proc.stderr[-3000:]}")
    return proc


def _route(url: str) -> dict:
    r = httpx.post(f"{url}/route", json={"prompt": "Which planet is known as the Red Planet?"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_rollback_moves_the_champion_and_the_running_service_answers_with_the_older_version(
        servers, first_run, nightly_run, live_service):
    url, env = live_service["url"], live_service["env"]
    old, new = first_run.version, nightly_run["version"]
    client = servers.mlflow_client()

    def router_version(v: str) -> str:  # the id the older/newer router artifact carries (its manifest)
        run_id = client.get_model_version(servers.model, v).run_id
        path = client.download_artifacts(run_id, "router_manifest/manifest.json", str(env["MIXLLM_HOME"]))
        return json.loads(open(path, encoding="utf-8").read())["router_version"]

    # Make the newer version champion by hand (no --service-url: the service follows the alias by polling).
    if str(client.get_model_version_by_alias(servers.model, "champion").version) != new:
        run_cmd([str(VENV_BIN / "mixllm"), "promote", new, "--reason", "servers test", "--who", "pytest"], env)
    _wait_for(f"the service to serve version {new}", lambda: _route(url)["source_version"] == new, 60)
    assert _route(url)["router_version"] == router_version(new)

    # Roll back and tell the service at once (POST /admin/reload); the CLI waits until /readyz reports it.
    t0 = time.monotonic()
    proc = run_cmd([str(VENV_BIN / "mixllm"), "rollback", "--to", old, "--reason", "servers test rollback",
                    "--who", "pytest", "--service-url", url], env)
    assert f"version {new} -> {old}" in proc.stdout and f"now serves version {old}" in proc.stdout, proc.stdout
    answer = _route(url)
    assert answer["source_version"] == old and answer["router_version"] == router_version(old), answer
    assert time.monotonic() - t0 < 60
    tags = client.get_model_version(servers.model, old).tags
    assert tags["rolled_back_by"] == "pytest" and tags["rollback_reason"] == "servers test rollback"
