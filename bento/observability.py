"""What the service exposes about itself beyond metrics: a JSON ``/readyz``, and per-request tracing settings."""

from __future__ import annotations

from typing import Any

import bentoml
from starlette.responses import JSONResponse

ROUTING_PATHS = ("/route", "/route/batch")


class ReadyzMiddleware:
    """Answers ``GET /readyz`` with JSON (router version, registry state) instead of BentoML's empty 200.

    503 until a router is loaded; once loaded it stays 200 even when the registry is unreachable (the service keeps
    serving what it has) and says so in ``source_reachable`` / ``last_error``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz" and scope["method"] in ("GET", "HEAD"):
            svc = bentoml.get_current_service()
            status = svc.status() if hasattr(svc, "status") else {"ready": False, "starting": True}
            await JSONResponse(status, status_code=200 if status["ready"] else 503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def request_observability(trace_requests: bool) -> dict[str, Any]:
    """BentoML config for per-request tracing and access logs.

    Off by default (`MIXLLM_TRACE_REQUESTS=0`): the routing endpoints get no OpenTelemetry span and no request gets an
    access-log line. Both cost event-loop CPU on every /route call. Measured here with one client: 1.6-1.7 ms per
    request with both, 1.05-1.2 ms without the span, 1.45 ms without the log, 0.95-1.15 ms without either.
    Nothing is lost by default: each decision is already committed to the outbox under its `request_id`,
    BentoML's and our own Prometheus metrics still count every request, and the other endpoints keep their spans.
    """
    if trace_requests:
        return {}
    return {"tracing": {"excluded_urls": [f"{p}$" for p in ROUTING_PATHS]}, "logging": {"access": {"enabled": False}}}
