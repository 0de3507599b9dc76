"""The monitoring files in infra/: Prometheus rules pass `promtool` (syntax and the unit tests in
infra/prometheus/tests/), and the Grafana dashboard's queries are valid PromQL over series that the service
(bento/metrics.py), BentoML or the recording rules actually define. `promtool` comes with Debian's `prometheus`
package, which `infra/services.sh up` installs; the live check against a running Prometheus is in
tests/integration/test_monitoring.py (servers tier)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "infra" / "prometheus"
RULES = PROM / "mixllm.rules.yml"
DASHBOARD = REPO / "infra" / "grafana" / "mixllm.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`; "
                                    "`infra/services.sh up` installs it)")
BENTOML_SERIES = {"bentoml_service_request_total", "bentoml_service_request_duration_seconds"}  # BentoML 1.4
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def dashboard_queries(instance: str = ".+") -> list[str]:
    """Every PromQL expression of the dashboard (panel targets, annotations), with `$instance` as given."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    return [e.replace("$instance", instance) for e in exprs]


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"] for r in g["rules"]]


def _service_series() -> set[str]:
    """Exported names of the service's metrics: counters get `_total`, histograms `_bucket`/`_sum`/`_count`."""
    src = (REPO / "bento" / "metrics.py").read_text(encoding="utf-8")
    out = set()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(mixllm_\w+)\"", src):
        out |= {f"{name}_total"} if kind == "Counter" else {name}
    return out


def _named_series(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:mixllm|bentoml)_\w+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b", expr))


def _defined(name: str, recorded: set[str], service: set[str]) -> bool:
    base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
    return name in recorded or name in service or base in service or base in BENTOML_SERIES


@needs_promtool
def test_rules_are_valid() -> None:
    assert "SUCCESS" in _promtool("check", "rules", str(RULES)).stdout


@needs_promtool
def test_rules_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (PROM / "tests").glob("*.yml"))
    assert tests, "no promtool tests in infra/prometheus/tests/"
    assert "SUCCESS" in _promtool("test", "rules", *tests).stdout


def test_the_rules_cover_what_operators_are_paged_for() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert {"MixLLMRouteErrorRateHigh", "MixLLMRouteLatencyP99High", "MixLLMOutboxBacklog",
            "MixLLMSpendPerHourDoubled", "MixLLMOnlineUpdatesFailing", "MixLLMRouterVersionChanged"} <= alerts
    tested = set(re.findall(r"alertname: (\w+)", "".join(p.read_text() for p in (PROM / "tests").glob("*.yml"))))
    assert alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no offline "check this expression": each query becomes a recording rule that it parses
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}:check", "expr": e}
                                                       for i, e in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    _promtool("check", "rules", str(path))


def test_rules_and_dashboard_name_only_series_that_are_defined() -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    service = _service_series()
    assert {"mixllm_spend_usd_total", "mixllm_route_latency_seconds", "mixllm_outbox_pending"} <= service
    exprs = [r["expr"] for r in _rules()] + dashboard_queries()
    unknown = {n for e in exprs for n in _named_series(e) if not _defined(n, recorded, service)}
    assert not unknown, f"series named in rules/dashboard but defined nowhere: {sorted(unknown)}"
    used = {n for e in dashboard_queries() for n in _named_series(e)}
    assert recorded <= used, f"recording rules the dashboard does not show: {sorted(recorded - used)}"
