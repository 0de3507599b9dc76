"""The durable outbox: every decision and feedback event must reach the nightly retrain.

Events are committed to a local SQLite (WAL) spool before the HTTP answer, then a forwarder (a child process,
`mixllm.serving.forwarder`, or a thread) sends them in batches to the `Store` and deletes them only after the store
accepted them. A crash or restart replays what was not forwarded (at-least-once; the store de-duplicates).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixllm.exceptions import ContractError, StoreError
from mixllm.schemas import FeedbackRecord, LogRecord
from mixllm.serving.settings import FORWARDER_STORE_ENV

log = logging.getLogger("mixllm.service")
_INSERT_DECISION = ("INSERT OR REPLACE INTO decisions (request_id, prompt, model, router_version, prompt_tokens, ts, "
                    "propensity) VALUES (?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class DecisionRef:
    """What feedback needs to know about an earlier decision (the prompt, for the online update and log rows)."""

    request_id: str
    prompt: str
    model: str
    router_version: str | None
    prompt_tokens: int | None
    propensity: float | None = None  # with which the policy chose `model` (observations of it carry it too)


class Outbox:
    """Durable local spool of decision and feedback events, forwarded in batches to the store by one thread.

    `put` returns after the events are committed to SQLite (WAL), so an acknowledged event survives a process crash;
    the forwarder deletes rows only after `Store.append_logs` / `append_feedback` returned. The decisions table also
    answers "which prompt and model was request X" for feedback, across restarts.
    """

    def __init__(self, path: Path, store_factory: Callable[[], Any], forward_interval: float = 0.5,
                 forward_batch: int = 2000, decisions_ttl_seconds: float = 7 * 86400) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._store_factory, self._store = store_factory, None
        self.forward_interval, self.forward_batch, self.decisions_ttl = forward_interval, forward_batch, \
            decisions_ttl_seconds
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        # No checkpoint on the request path: a commit that crosses SQLite's auto-checkpoint threshold would copy the
        # WAL into the database and fsync it in the routing thread (measured: p99 /route 24 -> 150 ms once the WAL
        # grows). The forwarder checkpoints on its own connection instead, which never blocks these writes.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer: sqlite3.Connection | None = None
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
                         " payload TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS rejected (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT "
                         "NULL, payload TEXT NOT NULL, reason TEXT NOT NULL, ts REAL NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS decisions (request_id TEXT PRIMARY KEY, prompt TEXT NOT NULL, "
                         "model TEXT NOT NULL, router_version TEXT, prompt_tokens INTEGER, ts REAL NOT NULL)")
        # Requests the challenger should also decide (shadow), drained by the shadow process (mixllm.serving.shadow)
        self._db.execute("CREATE TABLE IF NOT EXISTS shadow_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "payload TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS shadow_status (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "payload TEXT NOT NULL)")
        if "propensity" not in {r[1] for r in self._db.execute("PRAGMA table_info(decisions)")}:  # older spool
            self._db.execute("ALTER TABLE decisions ADD COLUMN propensity REAL")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._db.execute("CREATE TABLE IF NOT EXISTS forwarder_status (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "log INTEGER NOT NULL, feedback INTEGER NOT NULL, last_error TEXT, ts REAL NOT NULL)")
        self._db.execute("DELETE FROM forwarder_status")  # counters are per service start
        self._forwarded = {"log": 0, "feedback": 0}
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._store_url: str | None = None
        self._watchdog: threading.Thread | None = None
        self._in_child = False

    # -- writing (request path) --
    def put(self, records: Sequence[LogRecord | FeedbackRecord], decisions: Sequence[DecisionRef] = (),
            shadow: Sequence[str] = ()) -> None:
        """Commit events (and decision index rows, and shadow requests as JSON) in one transaction; raises
        `StoreError` if the spool fails. Shadow rows ride the decisions' commit: no extra write on the request path."""
        rows = [("feedback" if isinstance(r, FeedbackRecord) else "log", r.model_dump_json()) for r in records]
        now = time.time()
        drows = [(d.request_id, d.prompt, d.model, d.router_version, d.prompt_tokens, now, d.propensity)
                 for d in decisions]
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO outbox (kind, payload) VALUES (?, ?)", rows)
                    if drows:
                        self._db.executemany(_INSERT_DECISION, drows)
                    if shadow:
                        self._db.executemany("INSERT INTO shadow_queue (payload) VALUES (?)", [(p,) for p in shadow])
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise StoreError(f"cannot write the service outbox {self.path}: {e}; check disk space and permissions") \
                from e

    def decision(self, request_id: str) -> DecisionRef | None:
        with self._lock:
            row = self._db.execute("SELECT request_id, prompt, model, router_version, prompt_tokens, propensity FROM "
                                   "decisions WHERE request_id = ?", (request_id,)).fetchone()
        return DecisionRef(*row) if row else None

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def shadow_status(self) -> dict[str, Any]:
        """Shadow requests waiting, and what the shadow process last reported (challenger, counts, last error)."""
        with self._lock:
            queued = int(self._db.execute("SELECT COUNT(*) FROM shadow_queue").fetchone()[0])
            row = self._db.execute("SELECT payload FROM shadow_status WHERE id = 1").fetchone()
        return {"queued": queued, **(json.loads(row[0]) if row else {"worker": "not started"})}

    def unforwarded(self, limit: int) -> list[LogRecord | FeedbackRecord]:
        """Events committed here but not yet in the store (oldest first): a router loaded now must learn them too."""
        with self._lock:
            rows = self._db.execute("SELECT kind, payload FROM outbox ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [(FeedbackRecord if k == "feedback" else LogRecord).model_validate_json(p) for k, p in reversed(rows)]

    # -- forwarding (background) --
    def start(self, store_url: str | None = None) -> None:
        """Forward in the background: in a child process when `store_url` is given, else on a thread.

        Why a process for the service: forwarding is CPU-bound Python (pydantic parsing, digests, SQL, ~80 us per
        event), and any Python thread that runs beside the routing thread takes the GIL from torch between its
        kernels; every forward pass in flight then waits (measured: p99 /route 24 -> 400-560 ms with a 5 s
        forwarding period). The child shares only the spool file (SQLite WAL is multi-process safe) and reports
        its counters in the spool's `forwarder_status` row. A watchdog thread restarts it if it dies."""
        if store_url is not None:
            self._store_url = store_url
            self._spawn()
            self._watchdog = threading.Thread(target=self._watch, name="outbox-watchdog", daemon=True)
            self._watchdog.start()
        elif self._thread is None:
            self._thread = threading.Thread(target=self._forward_loop, name="outbox-forwarder", daemon=True)
            self._thread.start()

    def _spawn(self) -> None:
        env = {**os.environ, FORWARDER_STORE_ENV: self._store_url or ""}
        cmd = [sys.executable, "-m", "mixllm.serving.forwarder", str(self.path), "--interval",
               str(self.forward_interval), "--batch", str(self.forward_batch), "--ttl", str(self.decisions_ttl),
               "--parent", str(os.getpid())]
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def _watch(self) -> None:
        """Restart the forwarder process whenever it dies. Blocks in `wait()` rather than polling: a thread that
        wakes on a timer takes the GIL from the routing thread mid forward pass; this one wakes only when the
        child exits (at most one restart a second if it keeps dying)."""
        while not self._stop.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stop.is_set():
                return
            log.warning("outbox forwarder process exited with %s; restarting it", code)
            self._absorb_child_counts()  # the next child starts its counters at 0
            with self._lock:
                self._db.execute("DELETE FROM forwarder_status")
            if self._stop.wait(1.0):
                return
            self._spawn()

    def _cycle(self) -> bool:
        """One forwarding round: everything pending (batch by batch), decision pruning, a WAL checkpoint.
        Returns False (and keeps every row) when the store failed."""
        try:
            while self.forward_once() >= self.forward_batch:
                pass
            self._prune_decisions()
            self.checkpoint()
            self._set_error(None)
            return True
        except Exception as e:  # store down or a bug: keep the rows, retry with backoff, never lose them
            self._set_error(f"{type(e).__name__}: {e}")
            log.warning("outbox forwarding failed (will retry): %s", e)
            return False

    def _forward_loop(self) -> None:
        backoff = self.forward_interval
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            backoff = self._next_wait(self._cycle(), backoff)

    def _next_wait(self, ok: bool, backoff: float) -> float:
        """The forwarding period after a good round; after a failed one, double the wait (at most 30 s)."""
        return self.forward_interval if ok else min(max(backoff * 2, self.forward_interval), 30.0)

    def serve_forwarder(self, parent: int | None = None) -> None:
        """The child process's loop (`python -m mixllm.serving.forwarder SPOOL`): forward until SIGTERM or until the
        service that started it is gone, then return. Sleeps in short slices so either is seen within 0.1 s."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        backoff = self.forward_interval
        while not self._stop.is_set():
            deadline = time.monotonic() + backoff
            while not self._stop.is_set() and time.monotonic() < deadline:
                time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
                if parent is not None and os.getppid() != parent:  # the service died without stopping us
                    log.warning("outbox forwarder: the service process is gone; forwarding once more, then exiting")
                    self._stop.set()
            backoff = self._next_wait(self._cycle(), backoff)
        self._close_db()

    def _set_error(self, error: str | None) -> None:
        changed = error != self._last_error
        self._last_error = error
        if self._in_child and changed:
            self._write_status()

    def _write_status(self) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO forwarder_status VALUES (1, ?, ?, ?, ?)",
                             (self._forwarded["log"], self._forwarded["feedback"], self._last_error, time.time()))

    def _child_status(self) -> tuple[dict[str, int], str | None]:
        with self._lock:
            row = self._db.execute("SELECT log, feedback, last_error FROM forwarder_status WHERE id = 1").fetchone()
        return ({"log": row[0], "feedback": row[1]}, row[2]) if row else ({"log": 0, "feedback": 0}, None)

    @property
    def last_error(self) -> str | None:
        """Why the last forwarding round failed (None: it worked), from the child process when one forwards."""
        if self._proc is not None and self._last_error is None:
            return self._child_status()[1]
        return self._last_error

    @property
    def forwarded(self) -> dict[str, int]:
        """Events delivered to the store by the forwarder (this process's, or the child's since the spool opened)."""
        if self._proc is not None:
            child = self._child_status()[0]
            return {k: child[k] + self._forwarded[k] for k in child}
        return dict(self._forwarded)

    def forward_once(self) -> int:
        """Forward up to one batch to the store; returns how many events were forwarded (0 when empty)."""
        with self._lock:
            rows = self._db.execute("SELECT id, kind, payload FROM outbox ORDER BY id LIMIT ?",
                                    (self.forward_batch,)).fetchall()
        if not rows:
            return 0
        logs = [(i, LogRecord.model_validate_json(p)) for i, k, p in rows if k == "log"]
        feedback = [(i, FeedbackRecord.model_validate_json(p)) for i, k, p in rows if k == "feedback"]
        if self._store is None:
            self._store = self._store_factory()
        # decisions first: a feedback row never reaches the store before the decision it rates
        rejected = self._deliver(self._store.append_logs, logs) + self._deliver(self._store.append_feedback, feedback)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO rejected (kind, payload, reason, ts) VALUES (?, ?, ?, ?)",
                                 [("feedback" if isinstance(r, FeedbackRecord) else "log", r.model_dump_json(), why,
                                   time.time()) for r, why in rejected])
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i, _, _ in rows])
            self._db.execute("COMMIT")
        self._forwarded["log"] += len(logs)
        self._forwarded["feedback"] += len(feedback)
        if self._in_child:
            self._write_status()
        return len(rows)

    @staticmethod
    def _deliver(append: Callable[[list[Any]], Any], items: list[tuple[int, Any]]) -> list[tuple[Any, str]]:
        """Append records to the store; if its contract refuses the batch, retry one by one so that one bad event
        cannot block the spool forever. Returns the refused records with the reason (kept in the `rejected` table);
        any other error (store down) propagates and the whole batch stays in the spool."""
        records = [r for _, r in items]
        if not records:
            return []
        try:
            append(records)
            return []
        except ContractError:
            refused = []
            for r in records:
                try:
                    append([r])
                except ContractError as e:
                    log.error("the store's contract refused an outbox event (kept in the rejected table): %s", e)
                    refused.append((r, str(e)))
            return refused

    def rejected(self) -> list[dict[str, Any]]:
        """Events the store's contract refused, with the reason (they never block the spool)."""
        with self._lock:
            rows = self._db.execute("SELECT kind, payload, reason, ts FROM rejected ORDER BY id").fetchall()
        return [{"kind": k, "payload": json.loads(p), "reason": why, "ts": ts} for k, p, why, ts in rows]

    def checkpoint(self) -> None:
        """Move committed WAL pages into the database file (PASSIVE: never waits for, nor blocks, `put`)."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _prune_decisions(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM decisions WHERE ts < ?", (time.time() - self.decisions_ttl,))

    def flush(self, timeout: float = 30.0) -> int:
        """Forward everything now (used at shutdown); returns the events left in the spool (0 = all delivered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.forward_once() == 0:
                    return 0
            except Exception as e:
                self._last_error = f"{type(e).__name__}: {e}"
                log.warning("outbox flush failed; %d events stay in %s for the next start: %s", self.pending(),
                            self.path, e)
                break
        return self.pending()

    def close(self, flush_timeout: float = 30.0) -> int:
        """Stop the forwarder (thread or child process), deliver what is left from here, close the spool."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_timeout)
        if self._proc is not None:
            self._stop_child(flush_timeout)
        left = self.flush(flush_timeout)
        self._close_db()
        return left

    def _stop_child(self, timeout: float) -> None:
        if self._proc is not None:
            self._terminate(self._proc, timeout)
        if self._watchdog is not None:  # after the child: the watchdog blocks on it, then sees _stop set
            self._watchdog.join(timeout=5)
        proc = self._proc  # a child the watchdog started just before _stop was set is stopped too
        if proc is None:
            return
        self._terminate(proc, timeout)
        child_error = self._absorb_child_counts()  # always: the child's counts must not be lost
        self._last_error = self._last_error or child_error
        self._proc = None

    @staticmethod
    def _terminate(proc: subprocess.Popen, timeout: float) -> None:
        """SIGTERM: the child finishes its round (rows are deleted only after the store took them); killed if it
        does not stop within `timeout` (its rows stay in the spool). Nothing happens to a child already gone."""
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("outbox forwarder did not stop within %.0f s; killing it (its rows stay in the spool)",
                        timeout)
            proc.kill()
            proc.wait()

    def _absorb_child_counts(self) -> str | None:
        """Add the (stopped) child's delivered counts to ours; returns its last error."""
        counts, error = self._child_status()
        self._forwarded = {k: counts[k] + self._forwarded[k] for k in counts}
        return error

    def _close_db(self) -> None:
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
