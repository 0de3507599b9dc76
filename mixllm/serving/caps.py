"""How much one client's feedback may move the live router: caps per request id and per source.

Why: online updates change routing for everyone at once, and the feedback endpoint is open. Without caps, one
client rating the same answer a thousand times, or a script rating thousands of answers, would swing routing
without bound until the nightly retrain (which weighs each labelled decision once anyway). So, online:

- per (request id, model): at most one rating is applied, and at most one observed quality (which outranks a
  rating: it may still be applied after one). Repeats are stored for the nightly retrain, not re-applied.
- per source: at most `limit` online updates in any `window` seconds (by event time, so a replay after a restart
  applies the same cap as the live service did). The excess is stored, not applied, and the answer says why.

Events the service makes itself (pass-through cost observations) carry no quality signal and are not capped.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import datetime

from mixllm.schemas import FeedbackRecord, LogRecord


class OnlineCaps:
    """The caps of one live router (a swapped-in router replays with fresh caps). Not thread-safe: every online
    update runs on the routing thread (see MicroBatcher.call)."""

    def __init__(self, source_limit: int, window_seconds: float, max_keys: int = 1_000_000) -> None:
        self.source_limit, self.window, self.max_keys = source_limit, window_seconds, max_keys
        self._applied: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._sources: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def kind(record: LogRecord | FeedbackRecord) -> str | None:
        """"rating", "quality", or None for a record without a quality signal (never capped)."""
        if isinstance(record, FeedbackRecord):
            return "rating"
        return "quality" if record.quality is not None else None

    def refusal(self, record: LogRecord | FeedbackRecord, source: str) -> str | None:
        """Why this record must not be applied online (None: it may be); does not count it."""
        kind = self.kind(record)
        if kind is None:
            return None
        if (record.query_id, record.model, kind) in self._applied:
            return (f"{record.query_id!r} already had a {kind} for {record.model} applied online; repeats are stored "
                    "for the nightly retrain but not applied again")
        if kind == "rating" and (record.query_id, record.model, "quality") in self._applied:
            return f"an observed quality of {record.query_id!r} for {record.model} was applied; it outranks ratings"
        times = self._window(source, _seconds(record.ts))
        if times is not None and len(times) >= self.source_limit:
            return (f"source {source!r} made {len(times)} online updates in the last {self.window:.0f} s (limit "
                    f"{self.source_limit}, MIXLLM_FEEDBACK_SOURCE_LIMIT); stored for the nightly retrain only")
        return None

    def admit(self, record: LogRecord | FeedbackRecord, source: str) -> str | None:
        """`refusal`, and when there is none, count the record as applied."""
        why = self.refusal(record, source)
        kind = self.kind(record)
        if why is None and kind is not None:
            self._applied[(record.query_id, record.model, kind)] = None
            if len(self._applied) > self.max_keys:
                self._applied.popitem(last=False)
            times = self._sources.setdefault(source, deque())
            times.append(_seconds(record.ts))
            self._sources.move_to_end(source)
            if len(self._sources) > self.max_keys:
                self._sources.popitem(last=False)
        return why

    def _window(self, source: str, now: float) -> deque[float] | None:
        times = self._sources.get(source)
        while times and times[0] <= now - self.window:
            times.popleft()
        return times


def _seconds(ts: datetime) -> float:
    return ts.timestamp()
