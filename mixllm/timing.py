"""Wall-clock seconds per pipeline stage, measured where the work happens.

Why in the library and not only in the flows: some stages of a night live inside one library call (the base
encoding and the fine-tuning both happen in `pipeline.prepare_candidate`), and `bench/scale.py` reads the split
from the nightly flow's result (``"timings": {stage: seconds}``) instead of re-implementing the night. A
`StageClock` is passed explicitly by whoever owns the stage list; code deeper down reports into the active clock
with `timed(stage)`, which does nothing when no clock is active (so a library call outside a run costs nothing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ACTIVE: ContextVar["StageClock | None"] = ContextVar("mixllm_stage_clock", default=None)


class StageClock:
    """Accumulated wall seconds per stage name (a stage timed twice adds up), in the order stages first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)

    def merge(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.add(stage, value)

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        """Time the block as `stage`, and make this clock the one nested `timed` calls report to."""
        token = _ACTIVE.set(self)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)
            _ACTIVE.reset(token)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the block's wall seconds to `stage` of the active clock, if a run is timing itself."""
    clock = _ACTIVE.get()
    if clock is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        clock.add(stage, time.perf_counter() - start)
