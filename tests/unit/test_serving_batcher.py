"""Micro-batching on one routing thread, BLAS threads, the settled heap (mixllm.serving.batcher)."""

from __future__ import annotations

import time

import pytest

from mixllm.serving.batcher import MicroBatcher

pytestmark = pytest.mark.unit


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


def test_settle_heap_freezes_what_is_alive():
    import gc

    from mixllm.serving.batcher import settle_heap

    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_limit_blas_threads_leaves_numpy_one_blas_thread():
    import numpy as np  # noqa: F401 - loads numpy's BLAS
    from threadpoolctl import threadpool_info

    from mixllm.serving.batcher import limit_blas_threads

    handle = limit_blas_threads()
    try:
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
    finally:
        handle.restore_original_limits()
