"""Micro-batching on one routing thread, and the two process-wide settings a serving process needs (BLAS threads,
a settled heap). Read the docstrings before moving work on or off the routing thread: each says what it cost."""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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

