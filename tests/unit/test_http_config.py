"""The service's BentoML configuration: what the hot path skips by default, and the switch that restores it."""

from __future__ import annotations

import pytest
from opentelemetry.util.http import ExcludeList

pytestmark = pytest.mark.unit


def test_routing_endpoints_skip_spans_and_access_log_unless_asked():
    from bento.service import RouterService, request_observability

    cfg = request_observability(False)
    untraced = ExcludeList(cfg["tracing"]["excluded_urls"])
    assert untraced.url_disabled("http://127.0.0.1:3000/route")
    assert untraced.url_disabled("http://127.0.0.1:3000/route/batch")
    for path in ("/feedback", "/v1/chat/completions", "/admin/reload", "/routes", "/route/batch/x"):
        assert not untraced.url_disabled(f"http://127.0.0.1:3000{path}"), path
    assert cfg["logging"]["access"]["enabled"] is False
    assert request_observability(True) == {}  # MIXLLM_TRACE_REQUESTS=1: BentoML's defaults
    assert RouterService.config["logging"]["access"]["enabled"] is False  # the served default
