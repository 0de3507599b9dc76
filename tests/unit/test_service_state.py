"""Serving state without HTTP: session stickiness, micro-batching, the durable outbox, router swapping."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mixllm.exceptions import RegistryError
from mixllm.schemas import CandidateScore, FeedbackRecord, LogRecord, RouteDecision
from mixllm.service_state import (DecisionRef, MicroBatcher, Outbox, RouterHolder, RouterSource, SessionTracker,
                                  conversation_text)
from mixllm.store import Store

pytestmark = pytest.mark.unit


def decision(scores: dict[str, float], ineligible: tuple[str, ...] = ()) -> RouteDecision:
    cands = tuple(CandidateScore(model=m, predicted_quality=s, predicted_cost_usd=0.0, cost_term=0.0,
                                 exploration_bonus=0.0, waiting_penalty=0.0, score=s, eligible=m not in ineligible,
                                 reason="not allowed" if m in ineligible else None) for m, s in scores.items())
    best = max((c for c in cands if c.eligible), key=lambda c: c.score)
    return RouteDecision(model=best.model, willingness_to_pay=100.0, candidates=cands, router_version="v")


# ------------------------------------------------------------------------------------------------ sessions ----
def test_session_keeps_its_model_within_the_margin_and_switches_beyond_it() -> None:
    s = SessionTracker(margin=0.05)
    assert s.choose("c1", decision({"a": 0.9, "b": 0.5})).model == "a"
    kept = s.choose("c1", decision({"a": 0.60, "b": 0.63}))  # b is better by 0.03 <= margin: stay on a
    assert (kept.model, kept.sticky, kept.router_choice) == ("a", True, "b")
    switched = s.choose("c1", decision({"a": 0.50, "b": 0.70}))  # better by 0.20 > margin: switch
    assert (switched.model, switched.sticky) == ("b", False)
    assert s.choose("c1", decision({"a": 0.69, "b": 0.70})).model == "b"  # now sticks to b


def test_session_switches_when_its_model_is_not_allowed_and_without_session_never_sticks() -> None:
    s = SessionTracker(margin=1.0)
    s.choose("c1", decision({"a": 0.9, "b": 0.5}))
    assert s.choose("c1", decision({"a": 0.9, "b": 0.5}, ineligible=("a",))).model == "b"
    assert s.choose(None, decision({"a": 0.1, "b": 0.5})).sticky is False


def test_sessions_expire_and_are_bounded() -> None:
    s = SessionTracker(margin=1.0, ttl_seconds=0.05, max_sessions=3)
    s.choose("old", decision({"a": 0.9, "b": 0.5}))
    time.sleep(0.1)
    assert s.choose("old", decision({"a": 0.1, "b": 0.5})).model == "b"  # expired: a fresh choice
    for i in range(10):
        s.choose(f"s{i}", decision({"a": 0.9, "b": 0.5}))
    assert len(s) == 3


# ------------------------------------------------------------------------------------------------ batching ----
def test_micro_batcher_groups_concurrent_calls_and_isolates_failures() -> None:
    sizes: list[int] = []

    def work(items: list[int]) -> list[object]:
        time.sleep(0.02)  # while a batch runs, the next one queues up
        return [ValueError(f"bad {i}") if i % 7 == 0 else i * 10 for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(work, max_batch=16, on_batch=sizes.append)
    futures = [b.submit(i) for i in range(1, 50)]
    for i, f in zip(range(1, 50), futures):
        if i % 7 == 0:
            with pytest.raises(ValueError, match=f"bad {i}"):
                f.result(5)
        else:
            assert f.result(5) == i * 10
    b.close()
    assert max(sizes) > 1 and max(sizes) <= 16 and sum(sizes) == 49


def test_micro_batcher_delivers_a_crash_of_the_batch_to_every_caller() -> None:
    def boom(items: list[int]) -> list[int]:
        raise RuntimeError("encoder exploded")

    b: MicroBatcher[int, int] = MicroBatcher(boom)
    with pytest.raises(RuntimeError, match="exploded"):
        b.submit(1).result(5)
    b.close()


# ------------------------------------------------------------------------------------------------ outbox ------
def test_outbox_loses_nothing_under_concurrent_writers_and_a_crash(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    spool = tmp_path / "outbox.db"
    box = Outbox(spool, lambda: Store(store_url), forward_interval=3600)  # forwarder never runs: "crash" below
    n_threads, per_thread = 8, 150

    def writer(t: int) -> None:
        for i in range(per_thread):
            qid = f"q{t}-{i}"
            box.put([LogRecord(query_id=qid, prompt=f"prompt {t} {i}", model="claude-v2"),
                     FeedbackRecord(query_id=qid, model="claude-v2", rating=(i % 5) / 4)],
                    [DecisionRef(qid, f"prompt {t} {i}", "claude-v2", "v1", 3)])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box.pending() == 2 * n_threads * per_thread
    box.forward_batch = 500
    assert box.forward_once() == 500  # part of it reaches the store, then the process "dies" (no close/flush)
    del box

    reopened = Outbox(spool, lambda: Store(store_url), forward_batch=700)  # the next start replays the rest
    assert reopened.decision("q3-7") == DecisionRef("q3-7", "prompt 3 7", "claude-v2", "v1", 3)
    assert reopened.flush() == 0
    reopened.close()
    store = Store(store_url)
    logs, feedback = store.logs(), store.feedback()
    assert len(logs) == n_threads * per_thread and logs["query_id"].is_unique
    assert len(feedback) == n_threads * per_thread and feedback["query_id"].is_unique


def _until(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _events(prefix: str, n: int) -> list:
    return [r for i in range(n) for r in (LogRecord(query_id=f"{prefix}{i}", prompt=f"p {i}", model="claude-v2"),
                                         FeedbackRecord(query_id=f"{prefix}{i}", model="claude-v2", rating=1.0))]


def test_the_forwarder_process_delivers_reports_and_is_restarted_when_it_dies(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    box = Outbox(tmp_path / "outbox.db", lambda: Store(store_url), forward_interval=0.1)
    box.start(store_url=store_url)
    first = box._proc
    assert first is not None and box._thread is None  # a child process forwards, no thread of ours
    box.put(_events("a", 150))
    assert _until(lambda: box.pending() == 0)
    assert _until(lambda: box.forwarded == {"log": 150, "feedback": 150}) and box.last_error is None
    first.kill()
    assert _until(lambda: box._proc is not first and box._proc.poll() is None)  # the watchdog started another
    box.put(_events("b", 50))
    assert _until(lambda: box.pending() == 0)
    assert _until(lambda: box.forwarded == {"log": 200, "feedback": 200})  # both children's counts
    assert box.close() == 0 and first.poll() is not None
    logs, feedback = Store(store_url).logs(), Store(store_url).feedback()
    assert len(logs) == 200 and logs["query_id"].is_unique and len(feedback) == 200


def test_the_forwarder_process_reports_a_store_it_cannot_reach_and_keeps_the_events(tmp_path: Path) -> None:
    bad_url = "postgresql+psycopg://mixllm@127.0.0.1:1/nowhere"  # nothing listens on port 1
    good_url = f"sqlite:///{tmp_path / 'store.db'}"
    box = Outbox(tmp_path / "outbox.db", lambda: Store(good_url), forward_interval=0.1)
    box.start(store_url=bad_url)
    box.put(_events("c", 10))
    assert _until(lambda: box.last_error is not None)
    assert box.pending() == 20
    assert box.close() == 0  # the shutdown flush (this process, the working store) delivers them
    assert len(Store(good_url).logs()) == 10


def test_the_forwarder_process_exits_when_the_service_dies_without_stopping_it(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import psutil

    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    service = subprocess.Popen(  # a stand-in service process: starts the forwarder, then is killed -9
        [sys.executable, "-c", "import sys, time; from mixllm.service_state import Outbox; from mixllm.store import "
         "Store; b = Outbox(sys.argv[1], lambda: Store(sys.argv[2]), forward_interval=0.1); b.start(store_url="
         "sys.argv[2]); print(b._proc.pid, flush=True); time.sleep(600)", str(tmp_path / "outbox.db"), store_url],
        stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(service.stdout.readline()))
    os.kill(service.pid, signal.SIGKILL)
    service.wait()

    def gone() -> bool:
        try:
            return child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    assert _until(gone, timeout=15)


def test_outbox_keeps_events_while_the_store_is_down(tmp_path: Path) -> None:
    calls = {"n": 0}
    store_url = f"sqlite:///{tmp_path / 'store.db'}"

    def flaky_store() -> Store:
        calls["n"] += 1
        if calls["n"] == 1:
            from mixllm.exceptions import StoreError
            raise StoreError("store is down")
        return Store(store_url)

    box = Outbox(tmp_path / "outbox.db", flaky_store)
    box.put([FeedbackRecord(query_id="q1", model="claude-v2", rating=1.0)])
    assert box.flush() == 1 and "store is down" in (box.last_error or "")
    assert box.flush() == 0
    box.close()
    assert Store(store_url).feedback()["query_id"].tolist() == ["q1"]


def test_an_event_the_store_contract_refuses_is_set_aside_and_does_not_block_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_MAX_PROMPT_CHARS", "50")  # the store's contract: prompts of at most 50 characters
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    box = Outbox(tmp_path / "outbox.db", lambda: Store(store_url))
    box.put([LogRecord(query_id="ok-1", prompt="short prompt", model="claude-v2"),
             LogRecord(query_id="too-long", prompt="x" * 80, model="claude-v2"),
             FeedbackRecord(query_id="ok-1", model="claude-v2", rating=1.0)])
    assert box.flush() == 0 and box.pending() == 0
    (refused,) = box.rejected()
    assert refused["kind"] == "log" and refused["payload"]["query_id"] == "too-long"
    assert "max_prompt_chars" in refused["reason"]
    box.close()
    store = Store(store_url)
    assert store.logs()["query_id"].tolist() == ["ok-1"] and store.feedback()["query_id"].tolist() == ["ok-1"]


# ------------------------------------------------------------------------------------------------ routers -----
class VersionedSource(RouterSource):
    """Serves routers named after a version the test sets; `down` makes it fail like an unreachable registry."""

    description = "test"

    def __init__(self) -> None:
        self.version: str | None = "1"
        self.down = False
        self.loads = 0

    def current_ref(self) -> str | None:
        if self.down:
            raise RegistryError("registry unreachable")
        return self.version

    def load(self, ref: str) -> object:
        self.loads += 1
        return type("Loaded", (), {"version": f"router-{ref}"})()


def test_holder_swaps_on_alias_change_and_keeps_serving_when_the_source_is_down() -> None:
    src = VersionedSource()
    swaps: list[str | None] = []
    h = RouterHolder(src, on_swap=lambda r, ref: swaps.append(ref))
    assert h.refresh() and h.status()["router_version"] == "router-1"
    assert not h.refresh() and src.loads == 1  # unchanged alias: no reload
    src.version = "2"
    in_flight = h.router
    assert h.refresh() and h.router.version == "router-2" and in_flight.version == "router-1"
    src.down = True
    assert not h.refresh()
    st = h.status()
    assert st["ready"] and st["router_version"] == "router-2" and not st["source_reachable"]
    assert "unreachable" in st["last_error"]
    src.down, src.version = False, None  # alias removed: keep serving, report it
    assert not h.refresh() and h.router.version == "router-2" and not h.status()["source_reachable"]
    assert swaps == ["1", "2"]


def test_conversation_text_keeps_every_turn_in_order() -> None:
    text = conversation_text([{"role": "user", "content": "Sort a list in Python"},
                              {"role": "assistant", "content": "Use sorted()."},
                              {"role": "user", "content": [{"type": "text", "text": "And in Rust?"}]}])
    assert text.splitlines() == ["user: Sort a list in Python", "assistant: Use sorted().", "user: And in Rust?"]


def test_micro_batcher_call_runs_on_the_batcher_thread_between_batches():
    """Warm-ups and feedback encodes go through `call` so that one thread does every forward pass."""
    import threading

    seen: list[str] = []
    batcher = MicroBatcher(lambda items: [threading.current_thread().name for _ in items], 8, name="enc-thread")
    try:
        assert batcher.submit(1).result(timeout=5) == "enc-thread"
        assert batcher.call(lambda: threading.current_thread().name).result(timeout=5) == "enc-thread"
        nested = batcher.call(lambda: batcher.call(lambda: seen.append("inner") or "ok").result(timeout=5))
        assert nested.result(timeout=5) == "ok" and seen == ["inner"]  # no deadlock when called from the thread
        boom = batcher.call(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            boom.result(timeout=5)
        assert batcher.submit(2).result(timeout=5) == "enc-thread"  # an error in a call does not stop the thread
    finally:
        batcher.close()


def test_outbox_never_checkpoints_on_the_request_path_and_the_forwarder_does(tmp_path):
    """A checkpoint copies the WAL into the database and fsyncs: never inside `put` (the routing thread)."""
    import sqlite3

    def rows_in_main_file() -> int:  # immutable=1 reads the database file alone, ignoring the WAL
        con = sqlite3.connect(f"file:{tmp_path / 'spool.db'}?immutable=1", uri=True)
        try:
            return con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError:  # the table itself is still only in the WAL
            return 0
        finally:
            con.close()

    box = Outbox(tmp_path / "spool.db", lambda: None, forward_interval=3600)
    for i in range(1500):  # well past SQLite's default auto-checkpoint threshold (1000 pages)
        box.put([LogRecord(query_id=f"q{i}", prompt="p" * 2000, model="m")])
    assert rows_in_main_file() == 0
    box.checkpoint()
    assert rows_in_main_file() == 1500
    box.close(flush_timeout=0.1)


def test_settle_heap_freezes_what_is_alive():
    import gc

    from mixllm.service_state import settle_heap

    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_limit_blas_threads_leaves_numpy_one_blas_thread():
    import numpy as np  # noqa: F401 - loads numpy's BLAS
    from threadpoolctl import threadpool_info

    from mixllm.service_state import limit_blas_threads

    handle = limit_blas_threads()
    try:
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
    finally:
        handle.restore_original_limits()
