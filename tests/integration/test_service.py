"""The router service over real HTTP: started ONCE for this module with `mixllm serve` on a real MLflow registry
(SQLite) whose champion is the session's tiny trained router; a real store receives decisions and feedback.

Tests run in file order: the feedback load test crashes (SIGKILL) and restarts the service half-way; the last ones
move the champion alias, take the registry away and stop the service.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from service_harness import TOKEN, FakeUpstream, Served, registry, start_service
from service_harness import wait_for as _wait

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = ["What is the derivative of x**3 + 2x?", "Write a Python function that reverses a linked list.",
           "Which planet is known as the red planet?"]


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, trained_router_dir: Path, upstream: FakeUpstream):
    s = start_service(tmp_path_factory.mktemp("service-home"), trained_router_dir, upstream.url)
    yield s
    s.stop()


def _store(served: Served):
    from mixllm.store import Store

    return Store(served.store_url)


def _route(c: httpx.Client, served: Served, **body) -> dict:
    r = c.post("/route", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    served.routed.append(out["request_id"])
    return out


# ------------------------------------------------------------------------------------------------ probes ------
def test_readyz_reports_the_registry_champion(served: Served) -> None:
    st = httpx.get(f"{served.url}/readyz").json()
    assert st["ready"] and st["router_version"] == served.router_version
    assert st["source_version"] == "1" and st["source_reachable"] and st["source"].endswith("@champion")
    assert httpx.get(f"{served.url}/healthz").status_code == 200
    spec = httpx.get(f"{served.url}/docs.json").json()
    assert {"/route", "/route/batch", "/feedback", "/admin/reload"} <= set(spec["paths"])


# ------------------------------------------------------------------------------------------------ routing -----
def test_route_explains_its_choice_and_the_decision_reaches_the_store(served: Served) -> None:
    with served.client() as c:
        out = _route(c, served, prompt=PROMPTS[0], willingness_to_pay=100)
    assert out["model"] in served.models and out["router_version"] == served.router_version
    cands = {x["model"]: x for x in out["candidates"]}
    assert set(cands) == set(served.models)
    best = max((x for x in cands.values() if x["eligible"]), key=lambda x: x["score"])
    assert best["model"] == out["model"]
    assert all({"predicted_quality", "predicted_cost_usd", "cost_term", "score"} <= set(x) for x in cands.values())

    def stored():
        logs = _store(served).logs()
        return logs[logs["query_id"] == out["request_id"]]

    row = _wait(lambda: d if len(d := stored()) == 1 else None, 30, "the decision row in the store")
    assert row.iloc[0]["model"] == out["model"] and row.iloc[0]["prompt"] == PROMPTS[0]
    assert row.iloc[0]["quality"] is None or row.iloc[0]["quality"] != row.iloc[0]["quality"]  # null quality


def test_route_on_a_conversation_in_batches_and_under_constraints(served: Served) -> None:
    with served.client() as c:
        chat = _route(c, served, messages=[{"role": "user", "content": PROMPTS[1]},
                                           {"role": "assistant", "content": "def reverse(head): ..."},
                                           {"role": "user", "content": "Now explain its complexity."}])
        assert chat["model"] in served.models
        r = c.post("/route/batch", json={"prompts": PROMPTS, "willingness_to_pay": 50})
        assert r.status_code == 200, r.text
        decisions = r.json()["decisions"]
        served.routed += [d["request_id"] for d in decisions]
        assert len(decisions) == 3 and len({d["request_id"] for d in decisions}) == 3
        only = served.models[-1]
        assert _route(c, served, prompt=PROMPTS[2], allowed_models=[only])["model"] == only
        r = c.post("/route", json={"prompt": PROMPTS[2], "max_cost_usd": 0})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["max_cost_usd"]


def test_a_session_stays_on_its_model_unless_that_model_is_excluded(served: Served) -> None:
    with served.client() as c:  # the service runs with MIXLLM_STICKY_MARGIN=1.0: switching never pays
        first = _route(c, served, prompt=PROMPTS[0], session_id="conv-1")
        later = [_route(c, served, prompt=p, session_id="conv-1") for p in PROMPTS[1:]]
        assert all(x["model"] == first["model"] for x in later)
        assert all(x["sticky"] == (x["router_choice"] != first["model"]) for x in later)
        others = [m for m in served.models if m != first["model"]]
        moved = _route(c, served, prompt=PROMPTS[1], session_id="conv-1", allowed_models=others)
        assert moved["model"] in others and not moved["sticky"]


BAD = [
    ("/route", {"prompt": ""}, "prompt", 400),
    ("/route", {"prompt": "x" * 32_001}, "prompt", 400),
    ("/route", {"prompt": 5}, "prompt", 400),
    ("/route", {}, "prompt", 400),
    ("/route", {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "prompt", 400),
    ("/route", {"prompt": "hi", "allowed_models": ["gpt-5"]}, "allowed_models", 400),
    ("/route", {"prompt": "hi", "allowed_models": []}, "allowed_models", 400),
    ("/route", {"prompt": "hi", "max_cost_usd": -1}, "max_cost_usd", 400),
    ("/route", {"prompt": "hi", "willingness_to_pay": -5}, "willingness_to_pay", 400),
    ("/route", {"prompt": "hi", "willingness_to_pay": "lots"}, "willingness_to_pay", 400),
    ("/route", {"messages": [{"content": "no role"}]}, "messages", 400),
    ("/route/batch", {"prompts": []}, "prompts", 400),
    ("/route/batch", {"prompts": ["ok", ""]}, "prompts", 400),
    ("/feedback", {"request_id": "never-routed", "rating": 1}, "request_id", 404),
    ("/feedback", {"query_id": "q", "model": "gpt-5", "rating": 1}, "model", 400),
    ("/feedback", {"query_id": "q", "model": "claude-v2", "rating": 1.5}, "rating", 400),
    ("/feedback", {"query_id": "q", "model": "claude-v2", "cost_usd": -0.1}, "cost_usd", 400),
    ("/feedback", {"rating": 1}, "request_id", 400),
]


@pytest.mark.parametrize(("path", "body", "field", "status"), BAD, ids=[f"{p}:{f}:{i}" for i, (p, _, f, _)
                                                                       in enumerate(BAD)])
def test_bad_input_gets_a_4xx_that_names_the_field(served: Served, path: str, body: dict, field: str,
                                                   status: int) -> None:
    r = httpx.post(served.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    locs = [x["loc"] for x in r.json()["detail"]]
    assert any(loc and loc[0] == field for loc in locs), r.text


def test_malformed_json_and_wrong_content_get_a_400(served: Served) -> None:
    for raw in (b'{"prompt": ', b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(f"{served.url}/route", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.text)


# ------------------------------------------------------------------------------------------------ feedback ----
def test_feedback_is_learned_online_and_persisted(served: Served) -> None:
    with served.client() as c:
        rid = _route(c, served, prompt=PROMPTS[1])["request_id"]
        thumbs = c.post("/feedback", json={"request_id": rid, "rating": 1}).json()
        assert thumbs["recorded"] == ["feedback"] and thumbs["applied_online"], thumbs
        observed = c.post("/feedback", json={"request_id": rid, "quality": 0.25, "cost_usd": 0.0031,
                                             "latency_ms": 812, "completion_tokens": 120}).json()
        assert observed["recorded"] == ["log"] and observed["applied_online"], observed

    def rows():
        s = _store(served)
        fb, logs = s.feedback(), s.logs()
        return fb[fb["query_id"] == rid], logs[(logs["query_id"] == rid) & logs["quality"].notna()]

    def both():
        fb, obs = rows()
        return (fb, obs) if len(fb) and len(obs) else None

    fb, obs = _wait(both, 30, "feedback rows in the store")
    assert fb.iloc[0]["rating"] == 1.0 and fb.iloc[0]["model"] == thumbs["model"]
    assert obs.iloc[0]["quality"] == 0.25 and obs.iloc[0]["cost_usd"] == 0.0031 and obs.iloc[0]["latency_ms"] == 812


def test_a_repeated_rating_is_stored_but_not_learned_again(served: Served) -> None:
    with served.client() as c:
        rid = _route(c, served, prompt=PROMPTS[0])["request_id"]
        first = c.post("/feedback", json={"request_id": rid, "rating": 0}).json()
        again = c.post("/feedback", json={"request_id": rid, "rating": 1}).json()
    assert first["applied_online"] and not first["capped"], first
    assert again["recorded"] == ["feedback"] and not again["applied_online"] and again["capped"], again
    assert "already had a rating" in again["online_error"]


def test_metrics_expose_decisions_feedback_and_the_served_version(served: Served) -> None:
    text = httpx.get(f"{served.url}/metrics").text
    assert "mixllm_decisions_total{model=" in text and "mixllm_route_latency_seconds_bucket" in text
    assert f'mixllm_router_info{{router_version="{served.router_version}",source_version="1"}} 1.0' in text
    assert 'bentoml_service_request_duration_seconds_bucket{endpoint="/route"' in text
    assert 'mixllm_online_updates_total{result="ok"}' in text
    assert 'mixllm_feedback_total{kind="feedback"}' in text and "mixllm_outbox_pending" in text


def test_thousands_of_concurrent_feedback_events_survive_a_crash_and_restart(served: Served) -> None:
    """2,000 ratings from 32 concurrent clients; the service is SIGKILLed half-way (no flush, no shutdown hook),
    restarted on the same home, and the clients resend what was never acknowledged. Every acknowledged event must
    reach the store exactly once, and in the end every event is there."""
    with served.client() as c:
        r = c.post("/route/batch", json={"prompts": [f"{p} (variant {i})" for i in range(10) for p in PROMPTS]})
        assert r.status_code == 200, r.text
        rids = [d["request_id"] for d in r.json()["decisions"]]
    served.routed += rids
    n, tag = 2000, uuid.uuid4().hex[:6]
    body = {i: {"request_id": rids[i % len(rids)], "rating": (i % 101) / 100, "source": f"load-{tag}-{i}"}
            for i in range(n)}

    async def send(ids: list[int], kill_after: int | None) -> set[int]:
        acked: set[int] = set()
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=served.url, timeout=120,
                                     limits=httpx.Limits(max_connections=32)) as ac:
            async def one(i: int) -> None:
                async with sem:
                    try:
                        resp = await ac.post("/feedback", json=body[i])
                    except httpx.HTTPError:
                        return  # the service died under this request: not acknowledged
                    if resp.status_code == 200:
                        acked.add(i)
                    if kill_after is not None and len(acked) == kill_after:
                        served.stop(signal.SIGKILL)  # crash: the outbox forwarder may be mid-batch
            await asyncio.gather(*(one(i) for i in ids))
        return acked

    acked = asyncio.run(send(list(range(n)), kill_after=n // 2))
    assert served.proc.poll() is not None and n // 2 <= len(acked) < n, len(acked)
    served.start()  # same home: the outbox left by the crash is replayed to the store
    replay = httpx.get(f"{served.url}/readyz").json()["replay"]  # and what was learned online, into the router
    assert replay["error"] is None and replay["applied"] >= len({body[i]["request_id"] for i in acked}), replay
    retried = asyncio.run(send(sorted(set(range(n)) - acked), kill_after=None))
    assert len(acked) + len(retried) == n

    def stored():
        fb = _store(served).feedback()
        return fb[fb["source"].str.startswith(f"load-{tag}-")]

    rows = _wait(lambda: d if len(set((d := stored())["source"])) == n else None, 60,
                 f"{n} distinct feedback events in the store")
    counts = rows["source"].value_counts()
    assert (counts[[f"load-{tag}-{i}" for i in acked]] == 1).all(), "an acknowledged event was stored twice"
    assert httpx.get(f"{served.url}/readyz").json()["router_version"] == served.router_version


# ------------------------------------------------------------------------------------------------ pass-through
def test_chat_completions_pass_through_routes_forwards_and_records_cost(served: Served,
                                                                         upstream: FakeUpstream) -> None:
    from mixllm.catalogue import load_catalogue

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[2]}]
    with served.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "auto", "messages": chat, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        routed = r.headers["x-mixllm-model"]
        assert body["model"] == routed == body["mixllm"]["model"] and routed in served.models
        assert body["choices"][0]["message"]["content"] == f"answer from {routed}"
        sent = upstream.seen[-1]
        assert sent["ok"] and sent["body"]["model"] == routed and sent["body"]["messages"] == chat
        assert sent["body"]["temperature"] == 0
        expected_cost = load_catalogue().get(routed).cost_usd(12, 7)
        assert body["mixllm"]["cost_usd"] == pytest.approx(expected_cost)
        pinned = c.post("/v1/chat/completions", json={"model": "claude-v2", "messages": chat})
        assert pinned.status_code == 200 and pinned.headers["x-mixllm-model"] == "claude-v2"
    rid = body["mixllm"]["request_id"]
    served.routed.append(rid)

    def observed():
        logs = _store(served).logs()
        rows = logs[(logs["query_id"] == rid) & logs["cost_usd"].notna()]
        return rows if len(rows) else None

    row = _wait(observed, 30, "the pass-through observation in the store").iloc[0]
    assert row["cost_usd"] == pytest.approx(expected_cost) and row["latency_ms"] > 0
    assert row["prompt_tokens"] == 12 and row["completion_tokens"] == 7


# ------------------------------------------------------------------------------------------------ admin -------
def test_admin_reload_needs_the_token(served: Served) -> None:
    with served.client() as c:
        assert c.post("/admin/reload", json={}).status_code == 401
        assert c.post("/admin/reload", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/admin/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.json()["router_version"] == served.router_version and r.json()["source_version"] == "1"


# ------------------------------------------------------------------------------------------------ registry ----
def test_follows_the_alias_and_keeps_serving_when_the_registry_is_gone(served: Served,
                                                                        trained_router_dir: Path) -> None:
    reg = registry(served.home)
    v2 = reg.log_candidate(trained_router_dir, None, "b" * 64)
    reg.promote(v2, "newer", "pytest")
    # polled every second (MIXLLM_POLL_SECONDS=1); loading the new router beside the old one takes a few seconds
    _wait(lambda: httpx.get(f"{served.url}/readyz").json()["source_version"] == v2, 60, "the service to follow v2")

    db = served.home / "mlflow.db"
    shutil.move(db, served.home / "mlflow.db.away")  # the registry's database disappears
    try:
        st = _wait(lambda: (s := httpx.get(f"{served.url}/readyz")).status_code == 200
                   and not s.json()["source_reachable"] and s.json(), 60, "readyz to report the registry down")
        assert st["ready"] and st["source_version"] == v2 and st["last_error"]
        with served.client() as c:
            out = _route(c, served, prompt=PROMPTS[0])
        assert out["source_version"] == v2 and out["model"] in served.models
    finally:
        db.unlink(missing_ok=True)
        shutil.move(served.home / "mlflow.db.away", db)


def test_stopping_the_service_delivers_every_decision_to_the_store(served: Served) -> None:
    os.kill(served.proc.pid, signal.SIGTERM)  # the BentoML arbiter stops its worker, which flushes the outbox
    served.proc.wait(120)
    logs = _store(served).logs()
    missing = set(served.routed) - set(logs["query_id"])
    assert not missing, f"{len(missing)} decisions never reached the store"
