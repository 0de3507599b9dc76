"""ASGI middleware that keeps the HTTP contract honest: the OpenAPI spec states the limits the service enforces, a
body in a media type the API does not take is a 415 (not a parser crash), and the OpenAI-compatible path answers
every error in OpenAI's shape.

BentoML derives the spec from the API parameters' types, fixed when the module is imported; the limits that depend
on the running service (prompt length, batch size, the serving router's model names) are only known once it runs,
so `/docs.json` is completed on the way out with the values the engine checks against at that moment.
"""

from __future__ import annotations

import json
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from .http_models import http_error

JSON_TYPES = ("application/json",)
OPENAI_PREFIX = "/v1/"
SPEC_PATH = "/docs.json"


def _media_type(scope: Any) -> str | None:
    for k, v in scope.get("headers") or []:
        if k == b"content-type":
            return v.decode("latin-1").split(";")[0].strip().lower()
    return None


class ApiGuardMiddleware:
    """415 for POST bodies that are not JSON; OpenAI-shaped errors under ``/v1/``; a live `/docs.json`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "POST":
            media = _media_type(scope)
            if media is not None and media not in JSON_TYPES and not media.endswith("+json"):
                msg = f"unsupported Content-Type {media!r}: send the body as application/json"
                resp = (_openai(415, msg, "unsupported_media_type", "content-type") if path.startswith(OPENAI_PREFIX)
                        else http_error(415, "content-type", msg, "unsupported_media_type"))
                return await resp(scope, receive, send)
        if path == SPEC_PATH and method == "GET":
            return await _rewrite(self.app, scope, receive, send, _live_spec)
        if path.startswith(OPENAI_PREFIX) and method == "POST":
            return await _rewrite(self.app, scope, receive, send, _openai_shape, only_errors=True)
        return await self.app(scope, receive, send)


async def _rewrite(app: Any, scope: Any, receive: Any, send: Any, fix: Any, only_errors: bool = False) -> None:
    """Run `app`, buffering a JSON response body and passing it through `fix(status, body) -> body` (streams and
    responses left alone by `only_errors` go out untouched, chunk by chunk)."""
    start: dict[str, Any] | None = None
    chunks: list[bytes] = []

    async def capture(message: Any) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            media = dict(message.get("headers") or []).get(b"content-type", b"").decode("latin-1")
            if "json" in media and not (only_errors and message["status"] < 400):
                start = message
                return
        if start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        try:
            body = json.dumps(fix(start["status"], json.loads(body))).encode()
        except (ValueError, TypeError, KeyError):
            pass  # not what we expected: leave it as it was
        headers = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    await app(scope, receive, capture)


def _openai(status: int, message: str, code: str, param: str | None) -> JSONResponse:
    from .http_models import openai_error

    return openai_error(status, message, code, param=param)


def _openai_shape(status: int, body: Any) -> Any:
    """BentoML's own errors (validation: ``{"error", "detail": [...]}``) in OpenAI's shape."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    detail = body.get("detail") if isinstance(body, dict) else None
    first = detail[0] if isinstance(detail, list) and detail and isinstance(detail[0], dict) else {}
    message = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else str(body)
    if first.get("msg"):
        message = f"{message}: {'.'.join(map(str, first.get('loc') or []))}: {first['msg']}"
    loc = first.get("loc") or [None]
    return {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "api_error",
                      "param": loc[0], "code": first.get("type") or "invalid"}}


def _live_spec(status: int, spec: Any) -> Any:
    """The spec with the running service's limits: prompt and message length, batch size, model names."""
    svc = bentoml.get_current_service()
    engine = getattr(svc, "engine", None)
    if status != 200 or engine is None:
        return spec
    router, max_chars = engine.router, engine.max_prompt_chars
    models = list(router.models) if router is not None else None
    bodies = {p: (ops.get("post") or {}).get("requestBody", {}).get("content", {}).get("application/json", {})
              .get("schema", {}) for p, ops in spec.get("paths", {}).items()}
    for schema in bodies.values():
        props = schema.get("properties") or {}
        for text in (props.get("prompt"), (props.get("prompts") or {}).get("items")):
            if text is not None and max_chars:
                text["maxLength"] = max_chars
        if "prompts" in props:
            props["prompts"].update(minItems=1, maxItems=svc.http.max_batch_prompts)
        if models and "allowed_models" in props:
            _set_enum(props["allowed_models"]["items"], models)
    props = bodies.get("/feedback", {}).get("properties") or {}
    if models and "model" in props:
        _set_enum(props["model"], models)
    props = bodies.get("/v1/chat/completions", {}).get("properties") or {}
    if models and "model" in props:
        _set_enum(props["model"], ["auto", *models])
    if "/route" in bodies:  # exactly one of prompt / messages
        bodies["/route"]["oneOf"] = [{"required": ["prompt"]}, {"required": ["messages"]}]
    if "/feedback" in bodies:  # whose decision, and at least one thing about it
        bodies["/feedback"]["allOf"] = [
            {"anyOf": [{"required": ["request_id"]}, {"required": ["query_id", "model"]}]},
            {"anyOf": [{"required": [k]} for k in ("rating", "quality", "cost_usd", "latency_ms")]}]
    _link_feedback(spec, "/route", "$response.body#/request_id")
    _link_feedback(spec, "/route/batch", "$response.body#/decisions/0/request_id")
    message = spec.get("components", {}).get("schemas", {}).get("ChatMessage", {}).get("properties", {})
    for alt in (message.get("content") or {}).get("anyOf") or []:
        if max_chars and alt.get("type") == "string":
            alt["maxLength"] = max_chars
    return spec


def _set_enum(schema: dict[str, Any], values: list[str]) -> None:
    schema["enum"] = values
    schema["description"] = "One of the serving router's models (this list follows the router being served)."


def _link_feedback(spec: dict[str, Any], path: str, request_id: str) -> None:
    """An OpenAPI link: a decision's `request_id` is what `/feedback` takes (clients and stateful fuzzers follow it)."""
    ok = spec.get("paths", {}).get(path, {}).get("post", {}).get("responses", {}).get("200")
    if ok is not None and "/feedback" in spec["paths"]:
        ok["links"] = {"RateThisDecision": {"operationRef": "#/paths/~1feedback/post",
                                            "requestBody": {"request_id": request_id},
                                            "description": "Feedback on this decision."}}


def request_header(context: Any, name: str) -> str | None:
    """A header of the current request from BentoML's per-request context (not a `ctx` parameter: with one, BentoML
    replaces the status of every returned error response by ctx.response's 200); None outside an HTTP request."""
    try:
        return context.request.headers.get(name)
    except LookupError:
        return None
