"""Session stickiness: conversations should not bounce between models turn by turn; a session stays on its first
model unless the router's score for the new choice beats it by more than a margin."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from mixllm.schemas import RouteDecision


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

