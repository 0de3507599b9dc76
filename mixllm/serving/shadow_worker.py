"""The shadow process: ``python -m mixllm.serving.shadow_worker SPOOL`` lets the challenger decide the requests the
service queued in its spool (`Outbox.put(..., shadow=...)`) and writes both decisions to the store
(`mixllm.shadow`). Started and watched by `ShadowProcess` beside the service.

Why a process at the lowest CPU priority, not a thread: a second encoder forward pass in the service process
competes with the routing thread for the GIL and the 2 cores (see `MicroBatcher.call` and `Outbox.start`); a
SCHED_IDLE process with one compute thread only runs when the routing process does not, decides its queue in
batches (one forward pass for up to `shadow_batch` prompts), and lets the spool's queue wait when the service is
saturated (bounded by `shadow_queue_max`: the oldest are dropped and counted).
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mixllm.exceptions import MixLLMError
from mixllm.schemas import RouteConstraints
from mixllm.serving.holder import LocalDirSource, RegistrySource, RouterHolder, RouterSource
from mixllm.serving.settings import FORWARDER_STORE_ENV, ServingSettings

log = logging.getLogger("mixllm.shadow")


def challenger_source(cfg: ServingSettings, settings: Any = None) -> RouterSource:
    """The challenger: a local directory when configured, else the registry alias (`challenger`)."""
    if cfg.challenger_dir is not None:
        return LocalDirSource(cfg.challenger_dir)
    from mixllm.config import get_settings
    from mixllm.registry import Registry

    return RegistrySource(Registry(settings or get_settings()), cfg.challenger_alias)


class ShadowWorker:
    """Drains the spool's shadow queue through the challenger, one batch at a time (see module docstring)."""

    def __init__(self, spool: Path, source: RouterSource, store_factory: Callable[[], Any], batch: int = 64,
                 queue_max: int = 20_000, poll_seconds: float = 5.0) -> None:
        self.holder = RouterHolder(source)
        self.batch, self.queue_max, self.poll_seconds = batch, queue_max, poll_seconds
        self._store_factory, self._store = store_factory, None
        self._db = sqlite3.connect(spool, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA busy_timeout=30000")
        self.counts = {"decided": 0, "dropped": 0, "unroutable": 0}
        self.last_error: str | None = None
        self._next_poll = 0.0
        self._stop = threading.Event()

    def step(self) -> int:
        """One round: follow the challenger alias, drop past the cap, decide and store one batch. Returns the
        queued requests handled (0: nothing to do, or no challenger yet)."""
        if time.monotonic() >= self._next_poll:
            self.holder.refresh()
            self._next_poll = time.monotonic() + self.poll_seconds
        self._drop_overflow()
        router = self.holder.router
        if router is None or not self.holder.source_ok:  # none yet, or its alias was removed: wait, capped
            self.last_error = self.holder.last_error
            return 0
        rows = self._db.execute("SELECT id, payload FROM shadow_queue ORDER BY id LIMIT ?", (self.batch,)).fetchall()
        if not rows:
            return 0
        from mixllm import shadow

        payloads = [_parse(p) for _, p in rows]
        records = self.decide(router, [p for p in payloads if p is not None])
        if self._store is None:
            self._store = self._store_factory()
        shadow.append(self._store, records)  # a store error propagates: the rows stay queued for the next round
        self._db.executemany("DELETE FROM shadow_queue WHERE id = ?", [(i,) for i, _ in rows])
        self.counts["decided"] += len(records)
        self.counts["unroutable"] += len(rows) - len(records)
        self.last_error = None
        return len(rows)

    def decide(self, router: Any, payloads: Sequence[dict[str, Any]]) -> list[Any]:
        """The challenger's greedy decision for each queued request, at its willingness to pay and constraints;
        a request it cannot route (no eligible model, a model it does not know) is left out."""
        from mixllm.shadow import ShadowRecord

        if not payloads:
            return []
        pred = router.predict([p["prompt"] for p in payloads])
        groups: dict[tuple[float, str], list[int]] = {}
        for i, p in enumerate(payloads):
            groups.setdefault((float(p["willingness_to_pay"]), json.dumps(p.get("constraints"))), []).append(i)
        now, ref = datetime.now(timezone.utc), self.holder.ref
        out = []
        for (wtp, cjson), idxs in groups.items():
            limits = json.loads(cjson)
            constraints = RouteConstraints.model_validate(limits) if limits else None
            for i in idxs:  # one decide per request: one refusal never hides the others (decide is cheap)
                p = payloads[i]
                try:
                    d = router.decide(pred.take([i]), wtp, constraints, greedy=True)[0]
                except MixLLMError:
                    continue
                by = {c.model: c for c in d.candidates}
                own, theirs = by.get(d.model), by.get(p["champion_model"])
                record = _record(ShadowRecord, dict(
                    request_id=p["request_id"], ts=datetime.fromisoformat(p["ts"]), decided_at=now,
                    willingness_to_pay=wtp, champion_version=p["champion_version"],
                    challenger_version=str(router.version), challenger_ref=ref,
                    champion_model=p["champion_model"], challenger_model=d.model,
                    agree=d.model == p["champion_model"], champion_quality=p.get("champion_quality"),
                    champion_cost=p.get("champion_cost"),
                    challenger_quality=own.predicted_quality if own else None,
                    challenger_cost=own.predicted_cost_usd if own else None,
                    challenger_on_champion_quality=theirs.predicted_quality if theirs else None,
                    challenger_on_champion_cost=theirs.predicted_cost_usd if theirs else None))
                if record is not None:
                    out.append(record)
        return out

    def _drop_overflow(self) -> None:
        n = int(self._db.execute("SELECT COUNT(*) FROM shadow_queue").fetchone()[0])
        if n > self.queue_max:
            self._db.execute("DELETE FROM shadow_queue WHERE id IN (SELECT id FROM shadow_queue ORDER BY id "
                             "LIMIT ?)", (n - self.queue_max,))
            self.counts["dropped"] += n - self.queue_max

    def write_status(self) -> None:
        router = self.holder.router
        status = {"worker": "running", "challenger_version": getattr(router, "version", None),
                  "challenger_ref": self.holder.ref, **self.counts, "last_error": self.last_error,
                  "ts": time.time()}
        self._db.execute("INSERT OR REPLACE INTO shadow_status (id, payload) VALUES (1, ?)", (json.dumps(status),))

    def serve(self, parent: int | None = None, idle_seconds: float = 0.2) -> None:
        """Loop until SIGTERM or until the service that started it is gone."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        while not self._stop.is_set():
            try:
                busy = self.step() >= self.batch
            except Exception as e:  # noqa: BLE001 - store down or a bad challenger: report it, retry later
                self.last_error, busy = f"{type(e).__name__}: {e}", False
                log.warning("shadow round failed (will retry): %s", e)
            self.write_status()
            if parent is not None and os.getppid() != parent:
                return
            if not busy:
                self._stop.wait(idle_seconds)
        self._db.close()


_REQUIRED = ("request_id", "prompt", "champion_version", "champion_model", "ts")


def _parse(payload: str) -> dict[str, Any] | None:
    """A queued request, or None for one that cannot be read (dropped, never retried forever)."""
    try:
        p = json.loads(payload)
        ok = (isinstance(p, dict) and all(isinstance(p.get(k), str) and p[k].strip() for k in _REQUIRED)
              and float(p.get("willingness_to_pay")) > 0 and datetime.fromisoformat(p["ts"]) is not None)
        return p if ok else None
    except (ValueError, TypeError):
        return None


def _record(model: Any, fields: dict[str, Any]) -> Any:
    try:
        return model(**{k: v for k, v in fields.items()})
    except (ValueError, TypeError):  # a queued row that does not make a valid record: skip it, keep the rest
        log.warning("shadow: skipped request %s (invalid record)", fields.get("request_id"))
        return None


class ShadowProcess:
    """Start the shadow process beside the service, restart it if it dies, stop it with the service."""

    def __init__(self, spool: Path, store_url: str | None) -> None:
        self.spool, self.store_url = Path(spool), store_url
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="shadow-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self) -> None:
        env = {**os.environ, FORWARDER_STORE_ENV: self.store_url or "", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MIXLLM_ENCODER_THREADS": "1"}
        cmd = [sys.executable, "-m", "mixllm.serving.shadow_worker", str(self.spool), "--parent", str(os.getpid())]
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def _watch(self) -> None:
        """Blocks on the child (no timer wake-ups in the service process); restarts it at most once a second."""
        while not self._stop.is_set() and self._proc is not None:
            code = self._proc.wait()
            if self._stop.wait(1.0):
                return
            log.warning("shadow process exited with %s; restarting it", code)
            self._spawn()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        proc = self._proc
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        self._proc = None


def apply_priority(cfg: ServingSettings) -> str:
    """Lower this process's CPU priority as `shadow_priority` says; returns the policy applied ("idle" or "nice").

    "idle" is SCHED_IDLE (nice 19 where the OS refuses it); "nice" is nice 19 only, for a machine shared with batch
    jobs, where SCHED_IDLE would never run while they do."""
    from mixllm.serving.forwarder import lowest_priority

    if cfg.shadow_priority == "idle":
        return lowest_priority()
    os.nice(19 - os.nice(0))  # to 19 whatever it started at
    return "nice"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mixllm.serving.shadow_worker",
                                     description="Let the challenger decide a service's queued shadow requests.")
    parser.add_argument("spool", type=Path)
    parser.add_argument("--parent", type=int, default=None, help="exit once this process is no longer our parent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s mixllm.shadow %(levelname)s %(message)s")
    cfg = ServingSettings()
    apply_priority(cfg)
    from mixllm.serving.batcher import limit_blas_threads
    from mixllm.store import Store
    from mixllm.telemetry import go_offline

    go_offline()
    limit_blas_threads()
    url = os.environ.get(FORWARDER_STORE_ENV) or None
    worker = ShadowWorker(args.spool, challenger_source(cfg), lambda: Store(url), cfg.shadow_batch,
                          cfg.shadow_queue_max, cfg.poll_seconds or 5.0)
    worker.serve(args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
