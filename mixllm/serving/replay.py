"""What a router loaded now must learn before it serves: the feedback the service received after the router's
training snapshot.

Why: the live router learns online from feedback, and that state was lost on a restart or a swap to a newer
version until the next night's training folded the events in. The service only ever logs, so the state can be
rebuilt from the log: every rating (`feedback` rows) and every observed quality or cost (`interactions` rows with
an outcome) the service itself received (batch ``api-*``; files landed by `mixllm ingest` are training data, never
learned online) after the router's `data_until` (the newest training row; its `created` time when absent), plus
what is still in the outbox spool. Events are replayed oldest first, through the same `OnlineCaps` as live ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mixllm.schemas import FeedbackRecord, LogRecord

SERVICE_BATCHES = "api-"  # Store._append's batch ids: rows the service logged (mixllm.store)
_IN_CHUNK = 500  # query ids per IN (...) list: well under every backend's bound-parameter limit


@dataclass(frozen=True)
class Learnable:
    """One online update: the record, the prompt it is about, and the source the per-source cap counts."""

    record: LogRecord | FeedbackRecord
    prompt: str | None
    source: str


def snapshot_time(manifest: dict[str, Any]) -> datetime | None:
    """The newest moment the router's training data covers (UTC), or None when the manifest says nothing."""
    for key in ("data_until", "created"):
        value = manifest.get(key)
        if value:
            ts = datetime.fromisoformat(str(value))
            return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    return None


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(tzinfo=None)  # the store keeps naive UTC


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def stored_events(store: Any, since: datetime | None, limit: int) -> list[Learnable]:
    """The service's ratings and observations newer than `since` (at most `limit`, the newest), oldest first;
    a rating gets the prompt of the decision it rates (ratings of unknown queries are left out)."""
    import sqlalchemy as sa

    from mixllm.store import FEEDBACK, INTERACTIONS

    fb = sa.select(FEEDBACK.c.id, FEEDBACK.c.query_id, FEEDBACK.c.model, FEEDBACK.c.rating, FEEDBACK.c.ts,
                   FEEDBACK.c.source).where(FEEDBACK.c.batch_id.startswith(SERVICE_BATCHES))
    cols = ("query_id", "prompt", "model", "quality", "cost_usd", "prompt_tokens", "completion_tokens", "latency_ms",
            "ts")
    lg = sa.select(INTERACTIONS.c.id, *[INTERACTIONS.c[c] for c in cols]).where(
        INTERACTIONS.c.batch_id.startswith(SERVICE_BATCHES),
        sa.or_(INTERACTIONS.c.quality.is_not(None), INTERACTIONS.c.cost_usd.is_not(None)))
    if since is not None:
        fb, lg = fb.where(FEEDBACK.c.ts > _naive(since)), lg.where(INTERACTIONS.c.ts > _naive(since))
    with store.engine.connect() as conn:
        ratings = conn.execute(fb.order_by(FEEDBACK.c.id.desc()).limit(limit)).mappings().all()
        observed = conn.execute(lg.order_by(INTERACTIONS.c.id.desc()).limit(limit)).mappings().all()
        prompts = _prompts(conn, INTERACTIONS, sorted({r["query_id"] for r in ratings}))
    events = [Learnable(FeedbackRecord(query_id=r["query_id"], model=r["model"], rating=r["rating"],
                                       ts=_aware(r["ts"]), source=r["source"]), prompts[r["query_id"]], r["source"])
              for r in ratings if r["query_id"] in prompts]
    events += [Learnable(LogRecord(**{c: r[c] for c in cols if c != "ts"}, ts=_aware(r["ts"])), None, "log")
               for r in observed]
    events.sort(key=lambda e: e.record.ts)
    return events[-limit:] if limit else []


def _prompts(conn: Any, table: Any, query_ids: Sequence[str]) -> dict[str, str]:
    import sqlalchemy as sa

    out: dict[str, str] = {}
    for i in range(0, len(query_ids), _IN_CHUNK):
        q = sa.select(table.c.query_id, table.c.prompt).where(table.c.query_id.in_(query_ids[i:i + _IN_CHUNK]))
        for qid, prompt in conn.execute(q):
            out.setdefault(qid, prompt)
    return out


def spooled_events(outbox: Any, since: datetime | None, limit: int) -> list[Learnable]:
    """Ratings and observations still in the outbox spool (committed, not yet forwarded), newer than `since`."""
    events = []
    for r in outbox.unforwarded(limit):
        if since is not None and _aware(r.ts) <= since:
            continue
        if isinstance(r, FeedbackRecord):
            ref = outbox.decision(r.query_id)
            if ref is not None:
                events.append(Learnable(r, ref.prompt, r.source))
        elif r.quality is not None or r.cost_usd is not None:
            events.append(Learnable(r, None, "log"))
    return events
