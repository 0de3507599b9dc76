"""Monitoring against the real Prometheus from infra/ (servers tier): a live `mixllm serve` on this session's
champion is added as a scrape target (file_sd), gets real traffic (routes, a batch, feedback with observed quality
and cost), and Prometheus then answers with the service's series, evaluates the rules of infra/prometheus/ without
error, and returns data for every query of the Grafana dashboard (infra/grafana/mixllm.json).

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
import uuid
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DASHBOARD = REPO / "infra" / "grafana" / "mixllm.json"

pytestmark = [pytest.mark.integration, pytest.mark.servers]

PROMPTS = ["Which planet is known as the Red Planet?", "Write a Python function that reverses a linked list.",
           "The trophy didn't fit in the suitcase because it was too big. What was too big?"]


def _dashboard(instance: str) -> tuple[list[str], list[str]]:
    """The dashboard's panel queries and annotation queries, with `$instance` set as Grafana would."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [t["expr"].replace("$instance", instance) for p in dash["panels"] for t in p["targets"]]
    return panels, [a["expr"].replace("$instance", instance) for a in dash["annotations"]["list"] if "expr" in a]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, predicate, timeout: float = 120.0, every: float = 1.0):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _query(prometheus, expr: str) -> list[dict]:
    r = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {r.status_code} {body}"
    return body["data"]["result"]


@pytest.fixture(scope="module")
def scraped_service(servers, first_run, prometheus, tmp_path_factory):
    """`mixllm serve` on the session's champion, listed in Prometheus's targets folder (removed at the end), with
    traffic sent and scraped. Yields the scrape target's `instance` and the test's own `mixllm_test` label."""
    home = tmp_path_factory.mktemp("monitored-service")
    env = {**os.environ, **servers.mixllm_env(), "MIXLLM_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
    env.pop("MIXLLM_ROUTER_DIR", None)
    port = _free_port()
    url, instance, label = f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", uuid.uuid4().hex[:10]
    log = open(home / "service.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(VENV_BIN / "mixllm"), "serve", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    target = prometheus.targets / f"pytest-{label}.json"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"service exited {proc.returncode}:\n{(home / 'service.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for("the service to be ready", ready, 300)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [instance], "labels": {"mixllm_test": label}}]), encoding="utf-8")
        tmp.rename(target)  # whole file at once: file_sd never reads half of it
        # Two rounds of traffic with a scrape between them: a counter's first sample shows no increase, so rates
        # (and the ratios recorded from them) only have data once a later scrape sees the counters grow.
        with httpx.Client(base_url=url, timeout=60) as c:
            for n in range(2):
                ids = [c.post("/route", json={"prompt": p}).raise_for_status().json()["request_id"] for p in PROMPTS]
                c.post("/route/batch", json={"prompts": PROMPTS}).raise_for_status()
                for rid in ids:
                    c.post("/feedback", json={"request_id": rid, "rating": 1.0, "quality": 0.9,
                                              "cost_usd": 0.0025}).raise_for_status()
                if n == 0:
                    _wait_for("a scrape of the first round", lambda: _query(
                        prometheus, f'sum(mixllm_decisions_total{{mixllm_test="{label}"}}) >= 6'), 90)
        # The version the service itself says it serves: earlier servers-tier tests may have promoted a newer one
        # than the session's first run, and the service follows the champion alias.
        served = httpx.get(f"{url}/readyz", timeout=5).json()["source_version"]
        yield {"instance": instance, "label": label, "url": url, "champion": served}
    finally:
        target.unlink(missing_ok=True)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_prometheus_scrapes_the_service_and_has_its_series(prometheus, scraped_service) -> None:
    sel = f'mixllm_test="{scraped_service["label"]}"'
    up = _wait_for("Prometheus to scrape the new target",
                   lambda: _query(prometheus, f'up{{job="mixllm",{sel}}} == 1'), 90)
    assert up[0]["metric"]["instance"] == scraped_service["instance"]
    decisions = _wait_for("the decisions counter after the traffic",
                          lambda: _query(prometheus, f"sum(mixllm_decisions_total{{{sel}}}) >= 12"), 60)
    assert float(decisions[0]["value"][1]) == 12.0  # twice: 3 single routes + a batch of 3
    info = _query(prometheus, f"mixllm_router_info{{{sel}}} == 1")
    assert [s["metric"]["source_version"] for s in info] == [scraped_service["champion"]]
    # scrapes run during the traffic: wait for the last one to be counted
    spend = _wait_for("the spend counter", lambda: _query(prometheus, f"sum(mixllm_spend_usd_total{{{sel}}}) > 0.0149"),
                      60)
    assert float(spend[0]["value"][1]) == pytest.approx(6 * 0.0025)
    _wait_for("the feedback counter", lambda: _query(prometheus, f"sum(mixllm_feedback_total{{{sel}}}) >= 12"), 60)
    feedback = {s["metric"]["kind"]: float(s["value"][1])
                for s in _query(prometheus, f"sum by (kind) (mixllm_feedback_total{{{sel}}})")}
    assert feedback == {"feedback": 6.0, "log": 6.0}


def test_the_rules_are_loaded_and_evaluate_without_error(prometheus, scraped_service) -> None:
    errors = f'instance:mixllm_route_errors:ratio_rate5m{{instance="{scraped_service["instance"]}"}}'
    ratio = _wait_for("a rule evaluation over the traffic", lambda: _query(prometheus, f"{errors} >= 0"), 90)
    groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=30).json()["data"]["groups"]
    rules = {r["name"]: r for g in groups if g["file"].endswith("mixllm.rules.yml") for r in g["rules"]}
    assert {"MixLLMRouteErrorRateHigh", "MixLLMOutboxBacklog", "instance:mixllm_route_errors:ratio_rate5m"} \
        <= set(rules)
    bad = {n: r.get("lastError") for n, r in rules.items() if r["health"] != "ok"}
    assert not bad, bad
    assert float(ratio[0]["value"][1]) == 0.0  # every request got a decision: 0, not a gap


def test_every_dashboard_query_is_accepted_and_returns_the_service_series(prometheus, scraped_service) -> None:
    panel_queries, annotation_queries = _dashboard(scraped_service["instance"])
    for expr in annotation_queries:
        _query(prometheus, expr)  # event markers: accepted; empty unless a reload just happened
    empty = []
    for expr in panel_queries:
        try:
            _wait_for(f"data for {expr!r}", lambda e=expr: _query(prometheus, e), 60, every=2)
        except AssertionError:
            empty.append(expr)
    assert not empty, f"dashboard queries without data after real traffic: {empty}"
