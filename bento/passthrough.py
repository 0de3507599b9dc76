"""The OpenAI-compatible pass-through's HTTP side: the routed model's endpoint, its key, and the upstream call.
What the call cost is accounted by the engine (`ServingEngine.passthrough`)."""

from __future__ import annotations

import os
import time
from typing import Any

from .http_models import Messages


class UpstreamError(Exception):
    """The upstream cannot be called or answered badly: `status` (502/503) and `kind` for the HTTP error body."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


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


async def call(client: Any, url: str, headers: dict, body: dict, model: str) -> tuple[dict, float]:
    """POST the chat to the upstream; its JSON body and the latency (ms), or `UpstreamError` (502)."""
    t0 = time.perf_counter()
    try:
        resp = await client.post(url, json=body, headers=headers)
        data = resp.json() if resp.status_code < 300 else None
    except Exception as e:  # noqa: BLE001 - any transport or decoding failure of the upstream is a 502
        raise UpstreamError(502, f"upstream {model} at {url} failed: {type(e).__name__}: {e}", "upstream_error") \
            from e
    if data is None or not isinstance(data, dict):
        raise UpstreamError(502, f"upstream {model} answered {resp.status_code}: {resp.text[:300]}",
                            "upstream_error")
    return data, 1e3 * (time.perf_counter() - t0)
