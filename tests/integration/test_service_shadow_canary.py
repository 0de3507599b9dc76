"""Shadow and canary in the real service (`mixllm serve`, real SQLite MLflow registry, real store, real shadow
process): started with no challenger registered, it serves everything with the champion; once a challenger version
is registered it routes the canary share of sessions with it and the shadow process decides the champion's requests;
when the canary is stopped (alias removed) every request goes back to the champion; stopping the service stops the
shadow process. The same service holds a daily spend target and per-tenant caps (429 past the cap)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psutil
import pytest
from service_harness import FakeUpstream, registry, start_service, wait_for

from mixllm import shadow
from mixllm.registry import CHALLENGER

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PROMPTS = ["What is the derivative of x**3 + 2x?", "Write a Python function that reverses a linked list.",
           "Which planet is known as the red planet?"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, trained_router_dir: Path):
    with FakeUpstream() as up:
        s = start_service(tmp_path_factory.mktemp("shadow-canary-home"), trained_router_dir, up.url,
                          MIXLLM_SHADOW_SAMPLE="1.0", MIXLLM_CANARY_SHARE="0.5", MIXLLM_DAILY_SPEND_TARGET_USD="10",
                          MIXLLM_TENANT_BUDGETS='{"capped": 0, "tiny": 1e-9}')
        yield s
        s.stop()


def _readyz(c) -> dict:
    return c.get("/readyz").json()


def test_tenant_caps_answer_429_and_the_spend_controller_is_visible(served):
    c = served.client()
    tenant = {"x-mixllm-tenant": "capped"}
    r = c.post("/route", json={"prompt": PROMPTS[0]}, headers=tenant)
    assert r.status_code == 429 and r.json()["detail"][0]["loc"] == ["x-mixllm-tenant"], r.text
    chat = {"messages": [{"role": "user", "content": PROMPTS[1]}]}
    assert c.post("/v1/chat/completions", json=chat, headers=tenant).json()["error"]["code"] == "over_budget"
    first = c.post("/v1/chat/completions", json=chat, headers={"x-mixllm-tenant": "tiny"})
    assert first.status_code == 200  # under its cap; the call's cost is charged to it
    again = c.post("/route", json={"prompt": PROMPTS[2]}, headers={"x-mixllm-tenant": "tiny"})
    assert again.status_code == 429 and "daily cap" in again.json()["error"]
    assert c.post("/route", json={"prompt": PROMPTS[2]}).status_code == 200  # no header: no cap configured
    spend = _readyz(c)["spend"]
    assert spend["target_usd"] == 10 and spend["spent_today_usd"] > 0
    assert spend["bounds"] == [10.0, 100000.0]  # unset bounds: the default willingness to pay 1000 / and x 100
    assert "tiny" not in str(_readyz(c)["tenants"])  # tenants are shown as digests (the header may be a key)
    assert "mixllm_spend_willingness_to_pay" in c.get("/metrics").text


def test_shadow_and_canary_follow_the_challenger_alias(served, trained_router_dir, tmp_path):
    c = served.client()
    status = _readyz(c)
    assert status["canary"]["active"] is False and "does not resolve" in status["canary"]["last_error"]
    before = [c.post("/route", json={"prompt": p, "session_id": f"s{i}"}).json() for i, p in enumerate(PROMPTS * 4)]
    assert {r["arm"] for r in before} == {"champion"}  # no challenger: the champion serves every session

    challenger = tmp_path / "challenger"
    shutil.copytree(trained_router_dir, challenger)
    manifest = json.loads((challenger / "manifest.json").read_text())
    manifest["router_version"] = "challenger-service"
    (challenger / "manifest.json").write_text(json.dumps(manifest))
    reg = registry(served.home)
    v2 = reg.log_candidate(challenger, None, "c" * 64)
    wait_for(lambda: _readyz(c)["canary"]["active"], 120, "the canary to load the challenger")

    routed = [c.post("/route", json={"prompt": PROMPTS[i % 3], "session_id": f"t{i % 12}"}).json()
              for i in range(36)]
    by_session: dict[str, set] = {}
    for r in routed:
        by_session.setdefault(r["session_id"], set()).add((r["arm"], r["router_version"], r["source_version"]))
    assert all(len(v) == 1 for v in by_session.values())  # sticky per session
    arms = {next(iter(v)) for v in by_session.values()}
    assert ("challenger", "challenger-service", v2) in arms and ("champion", served.router_version, "1") in arms

    canary_id = next(r["request_id"] for r in routed if r["arm"] == "challenger")
    ok = c.post("/feedback", json={"request_id": canary_id, "rating": 1.0})
    assert ok.status_code == 200 and ok.json()["model"]
    assert c.post("/feedback", json={"request_id": "no-such-request", "rating": 1.0}).status_code == 404

    champion_ids = {r["request_id"] for r in before + routed if r["arm"] == "champion"}
    state = wait_for(lambda: (s := _readyz(c)["shadow"]).get("decided", 0) >= len(champion_ids) and
                     s["queued"] == 0 and s, 180, "the shadow process to decide every champion request")
    assert state["challenger_version"] == "challenger-service" and state["dropped"] == 0
    rows = wait_for(lambda: (df := shadow.read(served.store())).shape[0] >= len(champion_ids) and df, 60,
                    "the shadow rows in the store")
    assert champion_ids <= set(rows["request_id"]) and rows["agree"].all()  # same model, greedy on both sides
    metrics = c.get("/metrics").text
    assert 'mixllm_route_arm_total{arm="challenger"}' in metrics and "mixllm_shadow_decided" in metrics

    reg.client.delete_registered_model_alias(reg.name, CHALLENGER)  # what a canary rollback does
    wait_for(lambda: not _readyz(c)["canary"]["active"], 60, "the canary to stop")
    after = [c.post("/route", json={"prompt": p, "session_id": f"t{i}"}).json() for i, p in enumerate(PROMPTS * 4)]
    assert {r["arm"] for r in after} == {"champion"}

    children = psutil.Process(served.proc.pid).children(recursive=True)
    assert any("mixllm.serving.shadow_worker" in " ".join(p.cmdline()) for p in children)
    served.stop()
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

