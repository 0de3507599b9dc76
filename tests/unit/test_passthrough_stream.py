"""The pass-through's SSE relay and upstream error mapping, on real httpx responses built from bytes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bento import passthrough

pytestmark = pytest.mark.unit


def _chunk(content: str | None = None, usage: dict | None = None) -> bytes:
    c = {"object": "chat.completion.chunk", "model": "upstream-name",
         "choices": [] if usage else [{"index": 0, "delta": {"content": content}}]}
    if usage:
        c["usage"] = usage
    return f"data: {json.dumps(c)}\n\n".encode()


def _relay(body: bytes, keep_usage: bool) -> tuple[list[bytes], passthrough.StreamTally]:
    upstream = httpx.Response(200, content=body, request=httpx.Request("POST", "http://upstream/v1/chat"))
    tally = passthrough.StreamTally()

    async def run() -> list[bytes]:
        return [e async for e in passthrough.relay_events(upstream, tally, {"model": "routed", "mixllm": {"x": 1}},
                                                          keep_usage, "routed")]

    return asyncio.run(run()), tally


def test_events_pass_one_by_one_with_the_routed_model_first_and_usage_counted() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    body = b": keep-alive\n\n" + _chunk("Hel") + _chunk("lo") + _chunk(usage=usage) + b"data: [DONE]\n\n"
    events, tally = _relay(body, keep_usage=False)
    first = json.loads(events[1].decode().split("data: ", 1)[1])
    assert events[0] == b": keep-alive\n\n" and first["model"] == "routed" and first["mixllm"] == {"x": 1}
    assert json.loads(events[2][6:])["model"] == "upstream-name"  # only the first data event is rewritten
    assert events[-1] == b"data: [DONE]\n\n" and len(events) == 4  # the usage chunk was not asked for
    assert tally.finished and tally.usage == usage and "".join(tally.text) == "Hello"
    assert _relay(body, keep_usage=True)[0][3] == _chunk(usage=usage)


def test_a_broken_upstream_ends_the_stream_with_an_openai_error_event() -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield _chunk("partial")
            raise httpx.RemoteProtocolError("peer closed connection")

    upstream = httpx.Response(200, stream=Broken(), request=httpx.Request("POST", "http://upstream/v1/chat"))
    tally = passthrough.StreamTally()

    async def run() -> list[bytes]:
        return [e async for e in passthrough.relay_events(upstream, tally, {}, False, "m")]

    events = asyncio.run(run())
    err = json.loads(events[-1][6:])["error"]
    assert err["code"] == "upstream_error" and "peer closed" in err["message"]
    assert not tally.finished and tally.text == ["partial"]


@pytest.mark.parametrize(("status", "expected", "type_"), [(400, 400, "invalid_request_error"),
                                                           (429, 429, "rate_limit_error"), (401, 502, "api_error"),
                                                           (503, 502, "api_error")])
def test_upstream_refusals_keep_the_callers_status_only_when_the_caller_caused_them(status, expected, type_) -> None:
    err = passthrough.refused(status, json.dumps({"error": {"message": "context too long"}}), "m")
    assert (err.status, err.type) == (expected, type_) and "context too long" in str(err)
    assert "<html>" in str(passthrough.refused(500, "<html>oops</html>", "m"))
