"""The OpenAI-compatible pass-through's HTTP side: the routed model's endpoint, its key, the upstream call (whole or
streamed as server-sent events) and how an upstream failure reads to an OpenAI client. What a call cost is accounted
by the engine (`ServingEngine.passthrough`), from the upstream's `usage` or from the text actually delivered;
`PassThrough` ties these together for one routed chat so the service stays a thin HTTP adapter.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import JSONResponse, StreamingResponse

from mixllm.exceptions import MixLLMError

from .http_models import Messages, openai_error

if TYPE_CHECKING:
    from mixllm.serving.engine import Routed, ServingEngine

    from .metrics import ServiceMetrics

log = logging.getLogger("mixllm.service")  # the service's logger: its pass-through messages read as before

# Upstream statuses that are the caller's own doing (passed on); anything else is the upstream's or ours (502).
CALLER_STATUSES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
                   422: "invalid_request_error", 429: "rate_limit_error"}


class UpstreamError(Exception):
    """The upstream cannot be called or refused the call: `status` and `kind` (the error's ``code``) for the body,
    `type` in OpenAI's vocabulary so its clients raise the matching exception (BadRequestError, RateLimitError...)."""

    def __init__(self, status: int, message: str, kind: str, type_: str = "api_error") -> None:
        super().__init__(message)
        self.status, self.kind, self.type = status, kind, type_


def request_parts(spec: Any, model: str, messages: Messages, params: dict[str, Any]) -> tuple[str, dict, dict]:
    """URL, headers and body of the upstream call for `model` (catalogue entry `spec`)."""
    if not spec.base_url:
        raise UpstreamError(503, f"model {model!r} has no base_url in the LLM catalogue; add one (and api_key_env) "
                            "to pass requests through", "no_endpoint")
    headers = {}
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise UpstreamError(503, f"environment variable {spec.api_key_env} (API key of {model}) is not set in "
                                "the service", "no_api_key")
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": model, "messages": [m.model_dump(exclude_none=True) for m in messages],
            **{k: v for k, v in params.items() if v is not None}}
    return f"{spec.base_url.rstrip('/')}/chat/completions", headers, body


def refused(status: int, text: str, model: str) -> UpstreamError:
    """The upstream's non-2xx answer as our error: its own message; its status when the request was at fault."""
    try:
        err = json.loads(text).get("error")
        message = err.get("message") if isinstance(err, dict) else str(err or "")
    except (ValueError, AttributeError):
        message = ""
    message = f"upstream {model} answered {status}: {(message or text)[:300]}"
    if status in CALLER_STATUSES:
        return UpstreamError(status, message, "upstream_rejected", CALLER_STATUSES[status])
    return UpstreamError(502, message, "upstream_error")


def transport_failed(e: Exception, model: str, url: str) -> UpstreamError:
    import httpx

    if isinstance(e, httpx.TimeoutException):
        return UpstreamError(504, f"upstream {model} at {url} timed out: {e}", "upstream_timeout")
    return UpstreamError(502, f"upstream {model} at {url} failed: {type(e).__name__}: {e}", "upstream_error")


async def call(client: Any, url: str, headers: dict, body: dict, model: str) -> tuple[dict, float]:
    """POST the chat to the upstream; its JSON body and the latency (ms), or `UpstreamError`."""
    t0 = time.perf_counter()
    try:
        resp = await client.post(url, json=body, headers=headers)
    except Exception as e:  # noqa: BLE001 - any transport failure of the upstream is a 502/504
        raise transport_failed(e, model, url) from e
    if resp.status_code >= 300:
        raise refused(resp.status_code, resp.text, model)
    try:
        data = resp.json()
    except ValueError as e:
        raise UpstreamError(502, f"upstream {model} answered non-JSON: {resp.text[:300]}", "upstream_error") from e
    if not isinstance(data, dict):
        raise UpstreamError(502, f"upstream {model} answered {type(data).__name__}, not an object", "upstream_error")
    return data, 1e3 * (time.perf_counter() - t0)


async def open_stream(client: Any, url: str, headers: dict, body: dict, model: str) -> Any:
    """Start a streamed call; the open httpx response once the upstream accepted it (status 2xx), else
    `UpstreamError` (so a refusal is an ordinary JSON error, before any event was sent)."""
    try:
        resp = await client.send(client.build_request("POST", url, json=body, headers=headers), stream=True)
    except Exception as e:  # noqa: BLE001
        raise transport_failed(e, model, url) from e
    if resp.status_code >= 300:
        text = (await resp.aread()).decode("utf-8", "replace")
        await resp.aclose()
        raise refused(resp.status_code, text, model)
    return resp


@dataclass
class StreamTally:
    """What reached the client so far: the answer's text, the upstream's usage (when it sent one), whether the
    stream ended normally. Updated only after a chunk was handed on, so a disconnect counts what was delivered."""

    t0: float = field(default_factory=time.perf_counter)
    text: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    events: int = 0
    finished: bool = False

    def add(self, chunk: dict[str, Any]) -> None:
        self.events += 1
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            delta = c.get("delta") if isinstance(c, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                self.text.append(delta["content"])

    def as_completion(self) -> dict[str, Any]:
        """The shape `ServingEngine.passthrough` reads (usage, else the text to estimate tokens from)."""
        return {"usage": self.usage, "choices": [{"message": {"content": "".join(self.text)}}]}

    @property
    def latency_ms(self) -> float:
        return 1e3 * (time.perf_counter() - self.t0)


async def relay_events(upstream: Any, tally: StreamTally, first_extra: dict[str, Any], keep_usage_chunk: bool,
                       model: str) -> AsyncIterator[bytes]:
    """The upstream's SSE events, one chunk per event as soon as it is complete; the first data event carries the
    routed model (`first_extra`); the usage-only chunk is dropped unless the client asked for it. An upstream that
    breaks off mid-stream ends the stream with an OpenAI-style error event (its clients raise `APIError`)."""
    lines: list[str] = []
    first = True
    try:
        async for line in upstream.aiter_lines():
            if line:
                lines.append(line)
                continue
            if not lines:
                continue
            event, chunk = _event(lines, first_extra if first else None)
            lines = []
            if chunk is not None:
                first = False
                if not keep_usage_chunk and not chunk.get("choices") and chunk.get("usage"):
                    tally.add(chunk)  # counted, not forwarded
                    continue
            yield event
            if chunk is not None:
                tally.add(chunk)
        if lines:
            yield _event(lines, first_extra if first else None)[0]
        tally.finished = True
    except Exception as e:  # noqa: BLE001 - the client already has a 200: say it in the stream, not as a 500
        err = transport_failed(e, model, str(upstream.url))
        yield sse({"error": {"message": str(err), "type": err.type, "code": err.kind, "param": None}})


def _event(lines: list[str], first_extra: dict[str, Any] | None) -> tuple[bytes, dict[str, Any] | None]:
    """One SSE event as bytes, and its JSON data when it has one (rewritten with `first_extra` if given)."""
    data = "\n".join(x[5:].lstrip() for x in lines if x.startswith("data:"))
    chunk = None
    if data and data != "[DONE]":
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            chunk = parsed
            if first_extra is not None:
                chunk.update(first_extra)
                other = [x for x in lines if not x.startswith("data:")]
                return ("\n".join([*other, "data: " + json.dumps(chunk)]) + "\n\n").encode(), chunk
    return ("\n".join(lines) + "\n\n").encode(), chunk


def sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class RecordedStream(StreamingResponse):
    """A streaming response that runs `on_close` exactly once however the stream ends: completed, the client gone
    (send fails, or starlette cancels the stream when it hears ``http.disconnect``), or the worker stopping. The
    upstream response is closed first, so a departed client also stops the upstream's generation."""

    def __init__(self, content: AsyncIterator[bytes], upstream: Any, on_close: Callable[[], Awaitable[None]],
                 headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
        self._upstream, self._on_close = upstream, on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # record even when the stream was cancelled
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self._upstream.aclose()
                await self._on_close()


class PassThrough:
    """Forwards one routed chat to its model's endpoint and records what it cost (engine record, metrics), so the
    service only routes and answers. `endpoints` is the deployment catalogue read at start (None: the serving
    router's own catalogue, as a newer champion may know more models); one httpx client, opened on first use."""

    def __init__(self, engine: ServingEngine, metrics: ServiceMetrics, endpoints: Any, timeout: float) -> None:
        self.engine, self.metrics, self.endpoints, self.timeout = engine, metrics, endpoints, timeout
        self._http_client: Any = None

    async def aclose(self) -> None:
        if self._http_client is not None:
            await self._http_client.aclose()

    async def handle(self, r: Routed, text: str, messages: Messages, params: dict[str, Any], stream: bool,
                     include_usage: bool) -> JSONResponse | StreamingResponse:
        """The upstream's answer (or its SSE stream) with the routed model added; errors as OpenAI's."""
        chosen = r.choice.model
        if stream:  # always ask for usage: what the call cost is recorded from the upstream's own count
            params |= {"stream": True, "stream_options": {"include_usage": True}}
        try:  # the deployment catalogue (read at start), else the serving router's (a newer champion may know more)
            spec = (self.endpoints or self.engine.router.catalogue).get(chosen)
            url, headers, body = request_parts(spec, chosen, messages, params)
            client = self._client()
            if stream:
                upstream = await open_stream(client, url, headers, body, chosen)
            else:
                data, latency_ms = await call(client, url, headers, body, chosen)
        except MixLLMError as e:
            return openai_error(503, str(e), "no_endpoint", "api_error", "model")
        except UpstreamError as e:
            self.metrics.upstream.labels(chosen, "error").inc()
            return openai_error(e.status, str(e), e.kind, e.type)
        routing = {"request_id": r.request.request_id, "model": chosen, "router_version": r.decision.router_version}
        headers = {"x-mixllm-model": chosen, "x-mixllm-request-id": r.request.request_id}
        if stream:
            tally = StreamTally()
            events = relay_events(upstream, tally, {"model": chosen, "mixllm": routing}, include_usage, chosen)
            return RecordedStream(events, upstream, lambda: self._record_stream(r, text, spec, tally), headers)
        record = await self._record(r, text, data, spec, latency_ms, "ok")
        data["model"] = chosen
        data["mixllm"] = {**routing, "cost_usd": record.cost_usd, "latency_ms": latency_ms}
        return JSONResponse(data, headers=headers)

    def _client(self) -> Any:
        if self._http_client is None:
            import httpx

            self._http_client = httpx.AsyncClient(timeout=self.timeout)
        return self._http_client

    async def _record(self, r: Routed, text: str, data: dict, spec: Any, latency_ms: float, outcome: str) -> Any:
        self.metrics.upstream.labels(r.choice.model, outcome).inc()
        record = await self.engine.passthrough(r, text, data, spec, latency_ms)
        self.metrics.feedback.labels("log").inc()
        self.metrics.observe_cost(r.choice.model, record.cost_usd, "passthrough")
        return record

    async def _record_stream(self, r: Routed, text: str, spec: Any, tally: StreamTally) -> None:
        """When a stream ends (or the client left): the observation of what was delivered; tokens from the
        upstream's usage chunk when it came, else estimated from the delivered text."""
        try:
            record = await self._record(r, text, tally.as_completion(), spec, tally.latency_ms,
                                        "ok" if tally.finished else "partial")
        except Exception:  # noqa: BLE001 - the response is gone; a failed record is logged, never raised into it
            log.exception("streamed pass-through %s not recorded", r.request.request_id)
            return
        if not tally.finished:
            log.info("stream %s ended early after %d events; recorded %d completion tokens (%s)",
                     record.query_id, tally.events, record.completion_tokens,
                     "upstream usage" if tally.usage else "estimated from delivered text")
