"""The pipeline against the real servers from infra/: PostgreSQL-backed MLflow server, Prefect server + worker.

Needs ``infra/services.sh up`` and ``eval "$(infra/services.sh env)"`` (see tests/integration/conftest.py).
"""

from __future__ import annotations

import psycopg
import pytest

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
