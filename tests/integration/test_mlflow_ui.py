"""The real MLflow UI (served by the infra MLflow server) rendered by headless Chromium.

Chromium executes the UI's JavaScript and `--dump-dom` prints the DOM it built; the assertions read what a person
would see: the run comparison page lists the two versions' metrics with the values the runs logged (formatted
the way the UI formats them), the registered model page lists both versions with the champion alias, and the run
page shows the frontier plot.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.servers]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--virtual-time-budget=15000", "--window-size=2400,1400"]


def js_format_metric(v: float) -> float:
    """The number the MLflow UI prints for a metric (its `formatMetric`: 3 decimals below 10, 2 below 100...)."""
    if v == 0 or math.isnan(v):
        return v
    if abs(v) < 0.001:
        return float(f"{v:.3e}")
    scale = 1000 if abs(v) < 10 else 100 if abs(v) < 100 else 10
    return math.floor(v * scale + 0.5) / scale  # JavaScript's Math.round rounds halves up


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("no Chromium on PATH: `infra/services.sh up` installs Debian's chromium", pytrace=False)


def render(url: str, tmp_path: Path, name: str) -> str:
    """The DOM after the page's scripts ran (and a screenshot next to it, for a person to look at)."""
    profile = tmp_path / f"chromium-{name}"
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    proc = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    subprocess.run([*cmd, f"--screenshot={tmp_path / f'{name}.png'}", url], capture_output=True, timeout=120)
    return proc.stdout


def section(dom: str, start: str, end: str) -> str:
    i = dom.find(f">{start}<")
    j = dom.find(f">{end}<", i)
    assert i >= 0 and j > i, f"section {start!r} not rendered"
    return dom[i:j]


@pytest.fixture(scope="module")
def two_runs(servers, first_run, nightly_run):
    client = servers.mlflow_client()
    runs = [client.get_run(first_run.run_id),
            client.get_run(client.get_model_version(servers.model, nightly_run["version"]).run_id)]
    assert runs[0].info.experiment_id == runs[1].info.experiment_id
    return runs


def test_run_comparison_page_renders_both_versions_metrics(servers, two_runs, tmp_path):
    ids = [r.info.run_id for r in two_runs]
    url = (f"{servers.mlflow_url}/#/compare-runs?runs={json.dumps(ids)}"
           f"&experiments={json.dumps([two_runs[0].info.experiment_id])}")
    dom = render(url, tmp_path, "compare")
    assert f"Comparing {len(ids)} Runs" in dom, "the comparison page did not render"
    for r in two_runs:
        assert r.info.run_id in dom and html.escape(r.info.run_name) in dom

    metrics = section(dom, "Metrics", "Artifacts")
    names = [html.unescape(n) for n in re.findall(r'title="Plot chart" href="[^"]*">([^<]+)<', metrics)]
    cells = [html.unescape(v) for v in re.findall(r'<span tooltip-data-state="closed">([^<]*)</span>', metrics)]
    every = sorted(set(two_runs[0].data.metrics) | set(two_runs[1].data.metrics))
    # The table is virtualised: it renders the first rows (alphabetical) that fit; those must be the runs' own.
    assert len(names) >= min(10, len(every)) and names == every[:len(names)], (names, every[:20])
    assert "aiq" in names
    assert len(cells) == 2 * len(names), cells
    for row, name in enumerate(names):
        for col, run in enumerate(two_runs):
            shown, logged = cells[2 * row + col], run.data.metrics.get(name)
            if logged is None or math.isnan(logged):
                continue
            assert float(shown) == pytest.approx(js_format_metric(logged), rel=1e-9, abs=1e-12), (name, shown, logged)


def test_registered_model_page_lists_both_versions_with_the_champion_alias(servers, two_runs, first_run,
                                                                          nightly_run, tmp_path):
    dom = render(f"{servers.mlflow_url}/#/models/{servers.model}", tmp_path, "model")
    text = re.sub(r"<[^>]+>", "|", dom)
    for v in (first_run.version, nightly_run["version"]):
        assert f"Version {v}" in text, f"version {v} not listed"
    # The alias tag next to the champion's row ("@ champion"); a version with several aliases shows "+N".
    assert "champion" in text and "@&nbsp;champion" in dom, "the champion alias is not shown"
    assert "gate_verdict" in text, "version tags (gate verdict) are not shown"


def test_run_page_shows_the_frontier_plot(servers, two_runs, tmp_path):
    run = two_runs[0]
    url = (f"{servers.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
           f"/artifacts/evaluation/frontier.png")
    dom = render(url, tmp_path, "frontier")
    # The artifact viewer fetched the PNG from the server and shows it as an image (a blob: URL of its bytes).
    previews = re.findall(r'<img alt="evaluation/frontier.png" src="(blob:[^"]+)"', dom)
    assert previews, "the frontier plot is not displayed on the run page"
