"""Incremental snapshots of the interaction log: read only the rows landed since the previous snapshot.

Why: a night's snapshot read every row ever logged, so its cost grew with the log's whole history. The store is
append-only (rows are never updated or deleted; a row's identity is its content digest) and its `id` grows with
landing order, so the previous snapshot's rows plus the rows with a larger id are exactly a full read, in the
same order, with the same digest.

The previous rows and their high-water mark (largest `id`, row count, digest of the row at that id) are kept in a
folder per store URL under the mixllm home, as parts: each snapshot that read new rows writes them alone as one more
parquet file (writing every row again each night cost what the whole log costs), and the state names the parts in
order; past `MAX_PARTS` they are merged into one. Before reusing them, two indexed queries check the store still holds
exactly those rows: the row at the mark has the same digest (the store was not re-created) and the count of rows
up to the mark is unchanged (no row deleted, and no transaction that took a smaller id committed after the last
snapshot, which PostgreSQL allows). Anything else falls back to a full read, which becomes the new cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from mixllm.exceptions import StoreError
from mixllm.schemas import LOG_COLUMNS
from mixllm.store import INTERACTIONS, Store

_COLUMNS = ("id", *LOG_COLUMNS, "row_digest")
_FORMAT = 2  # 2: rows in parts (1: one rows.parquet)
MAX_PARTS = 64  # merge the parts into one past this many


@dataclass(frozen=True)
class SnapshotRead:
    """What one snapshot read: rows reused from the previous snapshot and rows read from the store."""

    reused: int
    read: int
    full: bool  # True: no usable previous snapshot (first night, store re-created, rows changed)
    reason: str


def cache_folder(home: Path, store_url: str) -> Path:
    """The folder of one store's previous snapshot (one per URL: two stores never share rows)."""
    return home / "snapshots" / hashlib.sha256(store_url.encode()).hexdigest()[:16]


def rows_digest(row_digests: pd.Series) -> str:
    """Digest of exactly which rows: sha256 over the sorted row digests (independent of landing order)."""
    h = hashlib.sha256()
    for d in sorted(row_digests):
        h.update(d.encode())
    return h.hexdigest()


def incremental_snapshot(store: Store, folder: Path) -> tuple[pd.DataFrame, str, SnapshotRead]:
    """The accepted log rows (LOG_COLUMNS, landing order) and their digest, as `Store.snapshot` returns them,
    reading only the rows after the previous snapshot's mark; then the cache moves to the new mark."""
    previous, reason = _usable_previous(store, folder)
    after = int(previous["id"].iloc[-1]) if previous is not None and len(previous) else 0
    new = _read(store, after)
    # concat only non-empty parts: an empty frame's object columns would turn typed columns into object
    rows = new if previous is None or previous.empty else previous if new.empty else \
        pd.concat([previous, new], ignore_index=True)
    if previous is None or len(new):
        _save(folder, rows, new if previous is not None else None)
    read = SnapshotRead(reused=0 if previous is None else len(previous), read=len(new), full=previous is None,
                        reason=reason)
    digest = rows_digest(rows["row_digest"])
    # dtypes as a full read infers them from all rows (a text column all null in one part is object there)
    out = rows.drop(columns=["id", "row_digest"]).reset_index(drop=True).infer_objects()
    return Store._typed_logs(out), digest, read


def _read(store: Store, after: int) -> pd.DataFrame:
    q = sa.select(*[INTERACTIONS.c[c] for c in _COLUMNS]).where(INTERACTIONS.c.id > after) \
        .order_by(INTERACTIONS.c.id)
    return store._frame(q, _COLUMNS)


def _usable_previous(store: Store, folder: Path) -> tuple[pd.DataFrame | None, str]:
    """The previous snapshot's rows if the store still holds exactly them up to their mark, else (None, why)."""
    state_path = folder / "state.json"
    if not state_path.is_file():
        return None, "no previous snapshot"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("format") != _FORMAT:
            return None, f"previous snapshot has format {state.get('format')}, not {_FORMAT}"
        mark, count, mark_digest = int(state["max_id"]), int(state["rows"]), state["max_id_digest"]
        parts = [str(p) for p in state["parts"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable previous snapshot state ({e})"
    try:
        with store.engine.connect() as conn:
            at_mark = conn.execute(sa.select(INTERACTIONS.c.row_digest).where(INTERACTIONS.c.id == mark)).scalar()
            upto = conn.execute(sa.select(sa.func.count()).select_from(INTERACTIONS)
                                .where(INTERACTIONS.c.id <= mark)).scalar()
    except sa.exc.SQLAlchemyError as e:
        raise StoreError(f"cannot read from {store.url!r}: {e}") from e
    if at_mark != mark_digest:
        return None, f"the store's row {mark} is not the previous snapshot's (store re-created?)"
    if upto != count:
        return None, f"the store holds {upto} rows up to id {mark}, the previous snapshot {count}"
    try:
        frames = [pd.read_parquet(folder / part) for part in parts]
    except (OSError, ValueError) as e:
        return None, f"unreadable previous snapshot rows ({e})"
    frames = [f for f in frames if len(f)] or frames[:1]
    rows = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if len(rows) != count or list(rows.columns) != list(_COLUMNS):
        return None, "previous snapshot rows do not match their state"
    return rows, f"previous snapshot up to id {mark}"


def _save(folder: Path, rows: pd.DataFrame, new: pd.DataFrame | None) -> None:
    """Write `new` (the rows read after the previous mark) as one more part, or every row as the only part when
    `new` is None (a full read) or the parts would exceed `MAX_PARTS`; then the state that names the parts. Each
    file is written under a temporary name and renamed, parts under names never used before: a night that dies
    half-way leaves the old state naming the old parts (a stray part is ignored, then removed by the next save)."""
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "state.json"
    parts: list[str] = []
    if new is not None and state_path.is_file():
        parts = list(json.loads(state_path.read_text(encoding="utf-8")).get("parts", []))
    number = 1 + max((int(p.split("-")[1].split(".")[0]) for p in parts), default=0)
    write, parts = (new, parts) if new is not None and 0 < len(parts) < MAX_PARTS else (rows, [])
    name = f"rows-{number:06d}.parquet"
    tmp = folder / f"{name}.tmp"
    write.to_parquet(tmp, index=False)
    os.replace(tmp, folder / name)
    parts.append(name)
    state = {"format": _FORMAT, "max_id": int(rows["id"].iloc[-1]) if len(rows) else 0, "rows": len(rows),
             "max_id_digest": str(rows["row_digest"].iloc[-1]) if len(rows) else None, "parts": parts}
    tmp_state = folder / "state.json.tmp"
    tmp_state.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp_state, state_path)
    for stale in folder.glob("rows*.parquet"):  # parts the state no longer names (merged, or a dead night's)
        if stale.name not in parts:
            stale.unlink(missing_ok=True)
