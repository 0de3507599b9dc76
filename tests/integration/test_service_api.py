"""The service as a drop-in for OpenAI applications, and its HTTP contract: the official `openai` client (sync and
async, streamed and not) through `mixllm serve` to a small OpenAI-compatible upstream on loopback; errors in OpenAI's
shape; the content types it refuses; and schemathesis against the served spec (no 5xx, no constraint the spec hides).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_harness import USAGE, FakeUpstream, Served, start_service, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which planet is the red planet?"}]
FUZZ_EXAMPLES = 60  # per operation and phase; the run must generate >= MIN_CASES cases in all
MIN_CASES = 1000


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, trained_router_dir: Path, upstream: FakeUpstream):
    s = start_service(tmp_path_factory.mktemp("service-api-home"), trained_router_dir, upstream.url)
    yield s
    s.stop()


def _client(served: Served, cls_name: str = "OpenAI"):
    import openai

    return getattr(openai, cls_name)(base_url=f"{served.url}/v1", api_key="unused-by-mixllm", max_retries=0,
                                     timeout=60)


def _chat(marker: str = "") -> list[dict]:
    return [CHAT[0], {"role": "user", "content": CHAT[1]["content"] + marker}]


def _observation(served: Served, request_id: str):
    def row():
        logs = served.store().logs()
        rows = logs[(logs["query_id"] == request_id) & logs["cost_usd"].notna()]
        return rows.iloc[0] if len(rows) else None

    return wait_for(row, 30, f"the pass-through observation of {request_id} in the store")


# ------------------------------------------------------------------------------------------ openai client -------
def test_openai_client_without_streaming(served: Served, upstream: FakeUpstream) -> None:
    from mixllm.catalogue import load_catalogue

    raw = _client(served).chat.completions.with_raw_response.create(model="auto", messages=_chat(), temperature=0)
    out = raw.parse()
    routed = raw.headers["x-mixllm-model"]
    assert out.model == routed and routed in served.models
    assert out.choices[0].message.content == f"answer from {routed}"
    assert out.usage.completion_tokens == USAGE["completion_tokens"]
    assert upstream.seen[-1]["body"]["model"] == routed and "stream" not in upstream.seen[-1]["body"]
    row = _observation(served, raw.headers["x-mixllm-request-id"])
    assert row["cost_usd"] == pytest.approx(load_catalogue().get(routed).cost_usd(12, 7))


def test_openai_client_streams_with_the_routed_model_first(served: Served, upstream: FakeUpstream) -> None:
    from mixllm.catalogue import load_catalogue

    raw = _client(served).chat.completions.with_raw_response.create(model="auto", messages=_chat(), stream=True)
    routed, rid = raw.headers["x-mixllm-model"], raw.headers["x-mixllm-request-id"]
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert chunks[0].model == routed and chunks[0].model_extra["mixllm"]["request_id"] == rid
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == f"answer from {routed} "
    assert all(c.choices for c in chunks), "the usage chunk was not asked for: it must not be forwarded"
    assert upstream.seen[-1]["body"]["stream_options"] == {"include_usage": True}  # the service asks for it
    row = _observation(served, rid)  # tokens from the upstream's usage chunk, not estimated
    assert row["prompt_tokens"] == 12 and row["completion_tokens"] == 7
    assert row["cost_usd"] == pytest.approx(load_catalogue().get(routed).cost_usd(12, 7))


def test_async_openai_client_streams_and_gets_usage_when_it_asks(served: Served) -> None:
    async def run():
        client = _client(served, "AsyncOpenAI")
        whole = await client.chat.completions.create(model="auto", messages=_chat())
        stream = await client.chat.completions.create(model="auto", messages=_chat(), stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        await client.close()
        return whole, chunks

    whole, chunks = asyncio.run(run())
    assert whole.choices[0].message.content == f"answer from {whole.model}"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == USAGE["total_tokens"]
    assert not chunks[-1].choices and chunks[0].model == chunks[0].model_extra["mixllm"]["model"]


def test_the_first_event_arrives_when_the_upstream_sends_it(served: Served) -> None:
    """The upstream sends 40 chunks 0.1 s apart: the first must reach the client long before the last."""
    t0 = time.perf_counter()
    stamps = []
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=60,
                      json={"messages": _chat(" [upstream:slow]"), "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.perf_counter() - t0)
    assert len(stamps) >= 40 and stamps[-1] >= 4.0
    assert stamps[1] < stamps[-1] - 3.0, stamps[:3]  # not buffered until the end


def test_a_client_that_leaves_mid_stream_is_charged_for_what_was_delivered(served: Served,
                                                                          upstream: FakeUpstream) -> None:
    from mixllm.catalogue import estimate_tokens

    before = upstream.streams.count("cancelled")
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=60,
                      json={"messages": _chat(" [upstream:slow]"), "stream": True}) as r:
        rid = r.headers["x-mixllm-request-id"]
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: {")
            if seen == 6:
                break  # closing the response drops the connection
    row = _observation(served, rid)
    full = estimate_tokens(" ".join(f"w{i}" for i in range(40)))
    assert 1 <= row["completion_tokens"] < full, row  # estimated from the delivered text, no usage came
    assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
    wait_for(lambda: upstream.streams.count("cancelled") > before, 15, "the upstream stream to be cancelled")


def test_upstream_failures_reach_the_client_as_openai_errors(served: Served) -> None:
    import openai

    client = _client(served)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="auto", messages=_chat(" [upstream:429]"))
    assert "fake upstream says 429" in e.value.message and e.value.code == "upstream_rejected"
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="auto", messages=_chat(" [upstream:500]"), stream=stream)
        assert e.value.status_code == 502 and e.value.body["code"] == "upstream_error"
    with pytest.raises(openai.APIError) as e:  # broke off after 3 chunks: an error event ends the stream
        list(client.chat.completions.create(model="auto", messages=_chat(" [upstream:break]"), stream=True))
    assert "upstream" in str(e.value.message)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-5", messages=_chat())
    assert e.value.code == "unknown_model" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:  # refused by validation (BentoML), still OpenAI's shape
        client.chat.completions.create(model="auto", messages=_chat(), temperature=5)
    assert e.value.param == "temperature" and "less than or equal to 2" in e.value.message
    r = httpx.post(f"{served.url}/v1/chat/completions", json={"messages": []}, timeout=60)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text


# ------------------------------------------------------------------------------------------ HTTP contract -------
POSTS = ["/route", "/route/batch", "/feedback", "/admin/reload", "/v1/chat/completions"]


@pytest.mark.parametrize("content_type", ["multipart/form-data", "text/plain", "application/x-www-form-urlencoded",
                                          "application/xml; charset=utf-8", "nonsense"])
def test_a_body_that_is_not_json_gets_a_415(served: Served, content_type: str) -> None:
    for path in POSTS:
        r = httpx.post(served.url + path, content=b'{"prompt": "hi"}', headers={"content-type": content_type},
                       timeout=60)
        assert r.status_code == 415, (path, r.status_code, r.text)
        assert "application/json" in r.text


def test_the_spec_states_the_limits_the_service_enforces(served: Served) -> None:
    from mixllm.config import get_settings

    spec = httpx.get(f"{served.url}/docs.json").json()
    body = {p: spec["paths"][p]["post"]["requestBody"]["content"]["application/json"]["schema"] for p in POSTS}
    limit = get_settings().max_prompt_chars
    assert body["/route"]["properties"]["prompt"]["maxLength"] == limit
    assert body["/route/batch"]["properties"]["prompts"]["items"]["maxLength"] == limit
    assert body["/route/batch"]["properties"]["prompts"]["maxItems"] == 256
    assert body["/route"]["properties"]["allowed_models"]["items"]["enum"] == served.models
    assert body["/feedback"]["properties"]["model"]["enum"] == served.models
    assert body["/v1/chat/completions"]["properties"]["model"]["enum"] == ["auto", *served.models]
    assert {"required": ["prompt"]} in body["/route"]["oneOf"]
    r = httpx.post(f"{served.url}/route", json={"prompt": "x" * (limit + 1)}, timeout=60)
    assert r.status_code == 400 and r.json()["detail"][0]["type"] == "too_long"


def test_schemathesis_finds_no_5xx_and_no_hidden_constraint(served: Served, tmp_path: Path) -> None:
    """Coverage, fuzzing and stateful phases against the served spec (`st run`), >= 1,000 generated cases."""
    report = tmp_path / "events.ndjson"
    t0 = time.perf_counter()
    run = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{served.url}/docs.json", "--phases",
         "coverage,fuzzing,stateful", "--max-examples", str(FUZZ_EXAMPLES), "--checks", "not_a_server_error",
         "--include-method", "POST", "--seed", "17", "--request-timeout", "60", "--no-shrink",
         "--report", "ndjson", "--report-ndjson-path", str(report)],
        capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "Schema validation mismatch" not in out and "validation_mismatch" not in out, out[-4000:]
    cases = _cases(report)
    print(f"schemathesis: {cases} cases in {took:.0f} s")
    assert cases >= MIN_CASES, (cases, out[-2000:])


def _cases(report: Path) -> int:
    """Generated cases sent, counted from the run's ndjson event log (one ScenarioFinished per scenario)."""
    n = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished:
            n += len((finished.get("recorder") or {}).get("interactions") or {})
    return n
