"""Serving state that is not HTTP: which router serves, micro-batching, session stickiness, the durable outbox.

`bento/service.py` adapts these to HTTP; routing itself stays in `mixllm.router` (the service never scores models).
Why each piece exists:

- `RouterHolder`: the registry decides which router serves. A poller follows the alias; a new router is loaded
  *beside* the old one and swapped in by one reference assignment, so in-flight requests finish on the router they
  started with. If the registry cannot be read, the loaded router keeps serving and `status()` says so.
- `MicroBatcher`: the encoder is the cost of a route. Concurrent requests queue up while a batch runs and are then
  routed together (one forward pass), with no fixed waiting window, so a lone client pays no batching delay.
- `SessionTracker`: conversations should not bounce between models turn by turn; a session stays on its first model
  unless the router's score for the new choice beats it by more than a margin.
- `Outbox`: every decision and feedback event must reach the nightly retrain. Events are committed to a local SQLite
  (WAL) spool before the HTTP answer, then a background thread forwards them in batches to the `Store` and deletes
  them only after the store accepted them. A crash or restart replays what was not forwarded (at-least-once).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mixllm.exceptions import ArtifactError, ContractError, MixLLMError, RegistryError, StoreError
from mixllm.schemas import FeedbackRecord, LogRecord, RouteDecision

log = logging.getLogger("mixllm.service")
T = TypeVar("T")
R = TypeVar("R")


# Where the nightly pipeline puts the champion's artifact inside a built Bento (next to `bento/` and `mixllm/`).
BUNDLED_ROUTER_DIRNAME = "champion_router"
# How the service hands the store URL to its outbox forwarder process (not argv: the URL may hold a password).
FORWARDER_STORE_ENV = "MIXLLM_FORWARDER_STORE_URL"


class ServiceSettings(BaseSettings):
    """Serving options (env prefix ``MIXLLM_``), read when the service starts."""

    model_config = SettingsConfigDict(env_prefix="MIXLLM_", extra="ignore")

    router_dir: Path | None = Field(default=None, description="Serve this local router directory (quickstart).")
    router_alias: str = Field(default="champion", min_length=1, description="Registry alias to serve and follow.")
    admin_token: SecretStr | None = Field(default=None, description="Bearer token for /admin/*; unset = disabled.")
    poll_seconds: float = Field(default=5.0, ge=0, description="Alias poll period; 0 disables polling.")
    sticky_margin: float = Field(default=0.05, ge=0, description="Score gain needed to switch a session's model.")
    session_ttl_seconds: float = Field(default=3600.0, gt=0)
    max_sessions: int = Field(default=100_000, gt=0)
    max_batch: int = Field(default=64, ge=1, description="Most prompts routed in one micro-batch.")
    max_batch_prompts: int = Field(default=256, ge=1, description="Most prompts in one /route/batch request.")
    spool_path: Path | None = Field(default=None, description="Outbox SQLite file (default: <home>/outbox.db).")
    forward_interval_seconds: float = Field(default=0.5, gt=0, description="Outbox -> store forwarding period.")
    forward_batch: int = Field(default=2000, ge=1)
    forwarder: Literal["process", "thread"] = Field(default="process", description="Where the outbox forwarder "
                                                    "runs: a child process keeps its CPU work off the routing "
                                                    "thread's GIL (see Outbox.start); a thread is one process less.")
    upstream_timeout_seconds: float = Field(default=120.0, gt=0, description="Pass-through call timeout.")
    trace_requests: bool = Field(default=False, description="BentoML's OpenTelemetry span for the routing "
                                 "endpoints and its access-log line for every request (see bento/README.md).")


# ------------------------------------------------------------------------------------------- routers ----------
class RouterSource:
    """Where routers come from: a version reference that is cheap to poll, and a loader for a reference."""

    description: str = ""

    def current_ref(self) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, ref: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class LocalDirSource(RouterSource):
    """A router directory on disk (quickstart); its reference changes when any file in it is rewritten."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"dir:{self.path}"

    def current_ref(self) -> str | None:
        if not self.path.is_dir():
            raise ArtifactError(f"router directory {self.path} does not exist; set MIXLLM_ROUTER_DIR to a saved router")
        stamps = sorted((str(p.relative_to(self.path)), p.stat().st_mtime_ns) for p in self.path.rglob("*")
                        if p.is_file())
        return hashlib.sha256(repr(stamps).encode()).hexdigest()[:12]

    def load(self, ref: str) -> Any:
        from mixllm.router import MixLLMRouter

        return MixLLMRouter.load(self.path)


class RegistrySource(RouterSource):
    """An alias of the MLflow registered model (``champion`` by default)."""

    def __init__(self, registry: Any, alias: str) -> None:
        self.registry, self.alias = registry, alias
        self.description = f"registry:{registry.name}@{alias}"

    def current_ref(self) -> str | None:
        return self.registry.version_for(self.alias)

    def load(self, ref: str) -> Any:
        return self.registry.load_router(ref)


class RouterHolder:
    """The router being served, swapped atomically; `lock` serialises routing and online updates on it."""

    def __init__(self, source: RouterSource, on_swap: Callable[[Any, str | None], None] | None = None) -> None:
        self.source = source
        self.router: Any = None
        self.ref: str | None = None
        self.lock = threading.Lock()
        self.source_ok = False
        self.last_error: str | None = None
        self.last_check: float | None = None
        self.loaded_at: float | None = None
        self._on_swap = on_swap
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self, force: bool = False) -> bool:
        """Load the source's current router if it changed (or `force`); returns True when a new one was swapped in.

        Never raises for an unreachable source: the router already loaded keeps serving and `status()` reports it.
        """
        with self._reload_lock:
            self.last_check = time.time()
            try:
                ref = self.source.current_ref()
                if ref is None:
                    raise RegistryError(f"{self.source.description} does not resolve to a version (alias unset, "
                                        "or the registry is unreachable)")
                self.source_ok, self.last_error = True, None
                if ref == self.ref and self.router is not None and not force:
                    return False
                router = self.source.load(ref)  # load beside the old one: in-flight requests keep theirs
            except Exception as e:  # noqa: BLE001 - an unreachable registry surfaces as any client error
                if not isinstance(e, (MixLLMError, OSError)):
                    log.exception("unexpected error while refreshing the router from %s", self.source.description)
                self.source_ok, self.last_error = False, f"{type(e).__name__}: {e}"
                log.warning("router source %s unavailable, keeping version %s: %s", self.source.description,
                            self.ref, e)
                return False
            self.router, self.ref, self.loaded_at = router, ref, time.time()
        log.info("serving router %s (%s %s)", getattr(router, "version", "?"), self.source.description, ref)
        if self._on_swap is not None:
            self._on_swap(router, ref)
        return True

    def start_polling(self, every_seconds: float) -> None:
        if every_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, args=(every_seconds,), name="router-poller", daemon=True)
        self._thread.start()

    def _poll(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.refresh()
            except Exception:  # a bug in a loader must not kill the poller; the error is logged with traceback
                log.exception("router refresh failed")

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        router = self.router
        return {"ready": router is not None,
                "router_version": getattr(router, "version", None),
                "source": self.source.description,
                "source_version": self.ref,
                "source_reachable": self.source_ok,
                "last_error": self.last_error,
                "loaded_at": self.loaded_at,
                "last_check": self.last_check}


# ------------------------------------------------------------------------------------------- batching ---------
@dataclass(frozen=True)
class _Call:
    fn: Callable[[], Any]


def _run_call(call: _Call, fut: Future) -> None:
    try:
        fut.set_result(call.fn())
    except BaseException as e:  # noqa: BLE001 - delivered to the caller
        fut.set_exception(e)


def limit_blas_threads() -> Any:
    """One BLAS thread for numpy in a serving process (process-wide; torch's own OpenMP team is untouched).

    Why: torch's OpenMP team already uses every core for the encoder; numpy's OpenBLAS starts a second team for the
    kNN quality search, and the two spinning teams fight for 2 cores: the per-query predictor step went from 0.8 to
    5.3 ms (p50) and /route p50 from 12 to 39 ms. Batches in a service are small, so one BLAS thread loses nothing.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")  # stays in force; the handle can restore the old limits


def settle_heap() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (`gc.freeze`), after a router load.

    Why: a serving process holds millions of long-lived objects (torch, transformers, pandas, the router), and each
    full collection walks all of them while holding the GIL: ~0.3 s with every request stalled (measured on /route:
    p99 184 ms in a 12 s run). Frozen objects are never scanned again, so full collections only see what requests
    allocate. Unfreezing and collecting first frees the cycles of a router just swapped out (one ~0.3 s pause per
    swap, not one every few thousand requests).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class MicroBatcher(Generic[T, R]):
    """Run `fn(list_of_items) -> list_of_results` on a worker thread over whatever queued while the last batch ran.

    `fn` returns one result or one Exception per item, in order; an Exception is raised to that item's caller only.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R | BaseException]], max_batch: int = 64,
                 name: str = "micro-batcher", on_batch: Callable[[int], None] | None = None) -> None:
        self.fn, self.max_batch, self.on_batch = fn, max_batch, on_batch
        self._queue: queue.Queue[tuple[T, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future:
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn()` on this batcher's thread, between batches. Why: torch's CPU kernels run ~1.8x slower once
        forward passes come from more than one thread of the process (each thread gets its own OpenMP team and
        the teams compete for the 2 cores), so warm-ups and feedback encodes go through the routing thread."""
        fut: Future = Future()
        if threading.current_thread() is self._thread:  # already on it: run now (queueing would deadlock)
            _run_call(_Call(fn), fut)
        else:
            self._queue.put((_Call(fn), fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first[0], _Call):
                _run_call(*first)
                continue
            batch, stop, call = [first], False, None
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if isinstance(nxt[0], _Call):
                    call = nxt
                    break
                batch.append(nxt)
            self._run_batch(batch)
            if call is not None:
                _run_call(*call)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[T, Future]]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            results = list(self.fn([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except BaseException as e:  # noqa: BLE001 - delivered to every caller of this batch, never swallowed
            results = [e] * len(batch)
        for (_, fut), res in zip(batch, results):
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)


# ------------------------------------------------------------------------------------------- sessions ---------
@dataclass(frozen=True)
class StickyChoice:
    model: str
    sticky: bool  # True when the session's earlier model was kept over the router's first choice
    router_choice: str


class SessionTracker:
    """Per-session model memory (LRU, bounded, with a time-to-live) and the switching rule."""

    def __init__(self, margin: float = 0.05, ttl_seconds: float = 3600.0, max_sessions: int = 100_000) -> None:
        self.margin, self.ttl, self.max_sessions = margin, ttl_seconds, max_sessions
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def choose(self, session_id: str | None, decision: RouteDecision) -> StickyChoice:
        """Keep the session's model unless it is ineligible now or the router's choice scores > margin higher."""
        if not session_id:
            return StickyChoice(decision.model, False, decision.model)
        now = time.monotonic()
        with self._lock:
            prev = self._sessions.get(session_id)
            model, sticky = decision.model, False
            if prev is not None and now - prev[1] <= self.ttl and prev[0] != decision.model:
                scores = {c.model: c for c in decision.candidates}
                best, kept = scores.get(decision.model), scores.get(prev[0])
                if kept is not None and kept.eligible and best is not None and best.score - kept.score <= self.margin:
                    model, sticky = prev[0], True
            self._sessions[session_id] = (model, now)
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return StickyChoice(model, sticky, decision.model)

    def __len__(self) -> int:
        return len(self._sessions)


# ------------------------------------------------------------------------------------------- outbox -----------
@dataclass(frozen=True)
class DecisionRef:
    """What feedback needs to know about an earlier decision (the prompt, for the online update and log rows)."""

    request_id: str
    prompt: str
    model: str
    router_version: str | None
    prompt_tokens: int | None


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
    def put(self, records: Sequence[LogRecord | FeedbackRecord], decisions: Sequence[DecisionRef] = ()) -> None:
        """Commit events (and decision index rows) in one transaction; raises `StoreError` if the spool fails."""
        rows = [("feedback" if isinstance(r, FeedbackRecord) else "log", r.model_dump_json()) for r in records]
        now = time.time()
        drows = [(d.request_id, d.prompt, d.model, d.router_version, d.prompt_tokens, now) for d in decisions]
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO outbox (kind, payload) VALUES (?, ?)", rows)
                    if drows:
                        self._db.executemany("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?)", drows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise StoreError(f"cannot write the service outbox {self.path}: {e}; check disk space and permissions") \
                from e

    def decision(self, request_id: str) -> DecisionRef | None:
        with self._lock:
            row = self._db.execute("SELECT request_id, prompt, model, router_version, prompt_tokens FROM decisions "
                                   "WHERE request_id = ?", (request_id,)).fetchone()
        return DecisionRef(*row) if row else None

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

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
        cmd = [sys.executable, "-m", "mixllm.service_state", str(self.path), "--interval", str(self.forward_interval),
               "--batch", str(self.forward_batch), "--ttl", str(self.decisions_ttl), "--parent", str(os.getpid())]
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def _watch(self) -> None:
        while not self._stop.wait(max(self.forward_interval, 1.0)):
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._stop.is_set():
                log.warning("outbox forwarder process exited with %s; restarting it", proc.returncode)
                self._absorb_child_counts()  # the next child starts its counters at 0
                with self._lock:
                    self._db.execute("DELETE FROM forwarder_status")
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
        """The child process's loop (`python -m mixllm.service_state SPOOL`): forward until SIGTERM or until the
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
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        proc = self._proc
        if proc is None:
            return
        proc.terminate()  # the child finishes its round (rows are deleted only after the store took them)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("outbox forwarder did not stop within %.0f s; killing it (its rows stay in the spool)",
                        timeout)
            proc.kill()
            proc.wait()
        child_error = self._absorb_child_counts()  # always: the child's counts must not be lost
        self._last_error = self._last_error or child_error
        self._proc = None

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

    def kick(self) -> None:
        self._wake.set()


def conversation_text(messages: Sequence[Any]) -> str:
    """The text the router sees for a chat: every turn, oldest first, as ``role: content`` lines.

    Routing on the whole conversation (not only the last turn) is what makes a follow-up like "and in Python?" land
    on a model that suits the thread.
    """
    parts = []
    for m in messages:
        role = getattr(m, "role", None) or (m.get("role") if isinstance(m, dict) else "user")
        content = getattr(m, "content", None) if not isinstance(m, dict) else m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if content:
            parts.append(f"{role}: {content}")
    return "\n".join(parts)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def forwarder_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the service's outbox forwarder process (started by `Outbox.start(store_url=...)`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mixllm.service_state",
                                     description="Forward a service outbox spool to the store until SIGTERM.")
    parser.add_argument("spool", type=Path)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--ttl", type=float, default=7 * 86400)
    parser.add_argument("--parent", type=int, default=None, help="exit once this process is no longer our parent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s mixllm.forwarder %(levelname)s %(message)s")
    # Lowest CPU priority: on a small machine the forwarder's bursts would otherwise take a core from the
    # encoder's thread team mid forward pass (a /route p99 spike); it catches up whenever a core is idle.
    os.nice(19)
    from mixllm.store import Store

    url = os.environ.get(FORWARDER_STORE_ENV) or None
    box = Outbox(args.spool, lambda: Store(url), args.interval, args.batch, args.ttl)
    box._in_child = True
    box.serve_forwarder(args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(forwarder_main())
