"""The durable outbox and its forwarder process (mixllm.serving.outbox, mixllm.serving.forwarder)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mixllm.schemas import FeedbackRecord, LogRecord
from mixllm.serving.outbox import DecisionRef, Outbox
from mixllm.store import Store

pytestmark = pytest.mark.unit


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
        [sys.executable, "-c", "import sys, time; from mixllm.serving.outbox import Outbox; from mixllm.store import "
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
