"""notebooks/compare_versions.ipynb executes (nbclient, real kernel) against the server's registry, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.integration, pytest.mark.servers]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "compare_versions.ipynb"


def outputs(nb) -> tuple[str, list[str], int]:
    """All text and HTML the notebook showed, and how many PNG images it displayed."""
    text, htmls, pngs = [], [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            data = out.get("data", {})
            text.append(data.get("text/plain", ""))
            if "text/html" in data:
                htmls.append(data["text/html"])
            pngs += "image/png" in data
    return "\n".join(text), htmls, pngs


def test_notebook_shows_two_registered_versions_side_by_side(servers, first_run, nightly_run, monkeypatch, tmp_path):
    a, b = first_run.version, nightly_run["version"]
    for k, v in {**servers.mixllm_env(), "MIXLLM_HOME": str(tmp_path / "home"),
                 "MIXLLM_COMPARE_VERSIONS": f"{a},{b}"}.items():
        monkeypatch.setenv(k, v)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text, htmls, pngs = outputs(nb)

    assert pngs >= 1, "no frontier figure displayed"
    client = servers.mlflow_client()
    runs = {v: client.get_run(client.get_model_version(servers.model, v).run_id) for v in (a, b)}
    headline = next(h for h in htmls if "aiq" in h and f"v{a}" in h and f"v{b}" in h)
    for v, run in runs.items():
        assert f"{run.data.metrics['aiq']:.4f}" in headline, (v, run.data.metrics["aiq"])
    tasks = sorted({k.split("/")[1] for k in runs[a].data.metrics if k.startswith("task/")})
    assert tasks, "the run logged no per-task metrics"
    per_task = next(h for h in htmls if all(t in h for t in tasks) and h is not headline)
    for t in tasks:
        key = f"task/{t}/aiq"
        if key in runs[a].data.metrics:
            assert f"{runs[a].data.metrics[key]:.4f}" in per_task, key
    # The machine-readable summary the last cell prints names both versions.
    summary = json.loads(text[text.index("{\"compared\""):].splitlines()[0])
    assert summary["compared"] == [a, b]
