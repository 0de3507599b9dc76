"""The interaction/feedback store: SQLAlchemy Core tables behind one URL (SQLite by default, PostgreSQL unchanged).

Every row carries the digest of its canonical content and the digest column is unique, so landing the same rows
twice (the same file again, or the same rows in another file, or a retried service call) adds nothing. Bulk ingest
validates through the GX suites; the service path (`append_logs` / `append_feedback`, one record per request)
validates with the pydantic records plus the same prompt bound, because a GX run costs ~50 ms per call.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from pydantic import ValidationError

from mixllm.exceptions import ContractError, StoreError
from mixllm.schemas import EXTRA_COLUMN, FEEDBACK_COLUMNS, LOG_COLUMNS, FeedbackRecord, LogRecord

META = sa.MetaData()
_DIGEST = sa.String(64)

INTERACTIONS = sa.Table(
    "interactions", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("row_digest", _DIGEST, nullable=False, unique=True),
    sa.Column("batch_id", sa.String(32), nullable=False, index=True),
    sa.Column("query_id", sa.Text, nullable=False, index=True),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("quality", sa.Float),
    sa.Column("cost_usd", sa.Float),
    sa.Column("prompt_tokens", sa.BigInteger),
    sa.Column("completion_tokens", sa.BigInteger),
    sa.Column("latency_ms", sa.Float),
    sa.Column("task", sa.Text),
    sa.Column("ts", sa.DateTime, nullable=False),  # naive UTC on every backend
    sa.Column("router_version", sa.Text),  # which router chose this model (null: no policy chose the row)
    sa.Column("propensity", sa.Float),  # with what probability, in (0, 1]
    sa.Column(EXTRA_COLUMN, sa.Text),  # the file's columns beyond the contract, JSON (not in row_digest)
)
# Nullable columns added after a store may already exist: `_add_missing_columns` adds them to an older table at open.
_ADDED_COLUMNS = {"interactions": ("router_version", "propensity", EXTRA_COLUMN), "feedback": (EXTRA_COLUMN,)}
FEEDBACK = sa.Table(
    "feedback", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("row_digest", _DIGEST, nullable=False, unique=True),
    sa.Column("batch_id", sa.String(32), nullable=False, index=True),
    sa.Column("query_id", sa.Text, nullable=False, index=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("rating", sa.Float, nullable=False),
    sa.Column("ts", sa.DateTime, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column(EXTRA_COLUMN, sa.Text),
)
QUARANTINE = sa.Table(
    "quarantine", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("row_digest", _DIGEST, nullable=False, unique=True),
    sa.Column("batch_id", sa.String(32), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("row_number", sa.Integer, nullable=False),
    sa.Column("expectation", sa.Text, nullable=False),
    sa.Column("column_name", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),  # the row as read, JSON
    sa.Column("quarantined_at", sa.DateTime, nullable=False),
)
BATCHES = sa.Table(
    "ingest_batches", META,
    sa.Column("batch_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("file_digest", _DIGEST, index=True),
    sa.Column("contract_digest", _DIGEST),  # suite JSON + its parameters: a new contract re-validates old files
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=False),
    sa.Column("rows_read", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("quarantined", sa.Integer, nullable=False),
    sa.Column("duplicate", sa.Integer, nullable=False),
)
_CHUNK = 500


@dataclass(frozen=True)
class IngestReport:
    """What one ingest of one file did."""

    batch_id: str
    path: str
    kind: str
    file_digest: str
    rows_read: int
    accepted: int
    quarantined: int
    duplicate: int
    seconds: float
    seen_before: bool = False  # same bytes under the same contract: counted as duplicates without validating
    extra_columns: tuple[str, ...] = ()  # the file's columns beyond the contract, kept per row as JSON metadata
    notes: tuple[str, ...] = ()  # what the report's reader should know (extra columns kept, likely typos)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utc_naive(ts: Any) -> datetime:
    """Naive UTC (how every backend stores ts); a naive input is taken to be UTC already."""
    t = pd.Timestamp(ts)
    return (t if t.tzinfo is None else t.tz_convert("UTC").tz_localize(None)).to_pydatetime()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(v: Any) -> Any:
    if isinstance(v, (datetime, pd.Timestamp)):
        return pd.Timestamp(v).isoformat()
    return repr(v)


class Store:
    """Interaction log, feedback, quarantine and ingest batches behind one SQLAlchemy URL."""

    def __init__(self, url: str | None = None) -> None:
        from mixllm.config import get_settings

        settings = get_settings()
        self.url = url or settings.store_url
        self.max_prompt_chars = settings.max_prompt_chars
        try:
            sa_url = sa.make_url(self.url)
            kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
            if sa_url.get_backend_name() == "sqlite":
                db = sa_url.database
                if db and db != ":memory:":
                    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
                else:  # one shared connection, or every pooled connection would see its own empty database
                    kwargs["poolclass"] = sa.pool.StaticPool
                kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
            self.engine = sa.create_engine(sa_url, **kwargs)
            if sa_url.get_backend_name() == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            META.create_all(self.engine)
            _add_missing_columns(self.engine)
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as e:
            raise StoreError(f"cannot open the store at {self.url!r}: {e}; check MIXLLM_STORE_URL") from e

    # ------------------------------------------------------------------ writing
    def _insert(self, conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise StoreError(f"unsupported store backend {conn.dialect.name!r}; use sqlite or postgresql")
        for start in range(0, len(rows), _CHUNK):
            conn.execute(insert(table).on_conflict_do_nothing(index_elements=["row_digest"]),
                         rows[start:start + _CHUNK])

    def _known(self, table: sa.Table, digests: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(digests), _CHUNK):
                chunk = list(digests[start:start + _CHUNK])
                found.update(conn.execute(sa.select(table.c.row_digest)
                                          .where(table.c.row_digest.in_(chunk))).scalars())
        return found

    def _land(self, kind: str, source: str, fdigest: str | None, rows_read: int, accepted: pd.DataFrame,
              accepted_digests: Sequence[str], quarantined: pd.DataFrame, quarantined_digests: Sequence[str],
              repeats: int, started: datetime, contract: str | None = None) -> IngestReport:
        """Write one batch: new accepted rows, new quarantined rows and the batch record, in one transaction."""
        table = INTERACTIONS if kind == "log" else FEEDBACK
        columns = LOG_COLUMNS if kind == "log" else FEEDBACK_COLUMNS
        batch_id = uuid.uuid4().hex
        known = self._known(table, accepted_digests)
        known_bad = self._known(QUARANTINE, quarantined_digests)
        good_rows = []
        for digest, rec in zip(accepted_digests, accepted.to_dict("records")):
            if digest in known:
                continue
            known.add(digest)
            row = {c: (None if pd.isna(rec[c]) else rec[c]) for c in columns}
            row[EXTRA_COLUMN] = rec.get(EXTRA_COLUMN) if isinstance(rec.get(EXTRA_COLUMN), str) else None
            row["ts"] = _utc_naive(rec["ts"])
            for c in ("prompt_tokens", "completion_tokens"):
                if c in row and row[c] is not None:
                    row[c] = int(row[c])
            good_rows.append({**row, "row_digest": digest, "batch_id": batch_id})
        bad_rows = []
        for digest, rec in zip(quarantined_digests, quarantined.to_dict("records")):
            if digest in known_bad:
                continue
            known_bad.add(digest)
            raw = {c: rec[c] for c in columns}
            if isinstance(rec.get(EXTRA_COLUMN), str):
                raw[EXTRA_COLUMN] = json.loads(rec[EXTRA_COLUMN])
            bad_rows.append({"row_digest": digest, "batch_id": batch_id, "kind": kind, "source": source,
                             "row_number": int(rec["row"]), "expectation": rec["expectation"],
                             "column_name": rec["column"], "reason": rec["reason"],
                             "raw": json.dumps(raw, default=_json_default, ensure_ascii=False),
                             "quarantined_at": started})
        duplicate = repeats + (len(accepted) - len(good_rows)) + (len(quarantined) - len(bad_rows))
        report = IngestReport(batch_id, source, kind, fdigest or "", rows_read, len(good_rows), len(bad_rows),
                              duplicate, 0.0)
        try:
            with self.engine.begin() as conn:
                self._insert(conn, table, good_rows)
                self._insert(conn, QUARANTINE, bad_rows)
                conn.execute(sa.insert(BATCHES), [{
                    "batch_id": batch_id, "kind": kind, "source": source, "file_digest": fdigest,
                    "contract_digest": contract,
                    "started_at": started, "finished_at": _now(), "rows_read": rows_read,
                    "accepted": report.accepted, "quarantined": report.quarantined, "duplicate": duplicate}])
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot write batch {batch_id} to {self.url!r}: {e}") from e
        return report

    def ingest(self, paths: str | Path | Iterable[str | Path], kind: str = "log",
               checked: dict[tuple[str, str], Any] | None = None) -> list[IngestReport]:
        """Validate and land each file; bad rows go to quarantine, good rows of the same file still land.

        `checked`: validation results already computed by the caller (the nightly's landing check), keyed by
        (file digest, contract digest): a file whose bytes and contract match one is not validated again."""
        import time

        from mixllm.contracts import contract_digest, gx_ready, validate
        from mixllm.data import expand_paths, read_feedback, read_log

        if kind not in ("log", "feedback"):
            raise ContractError(f"kind must be 'log' or 'feedback', got {kind!r}")
        paths = expand_paths(paths)
        reader = read_log if kind == "log" else read_feedback
        raws = [(Path(p), reader(p)) for p in paths]  # read every file first: a bad path fails before any write
        contract = contract_digest(kind, max_prompt_chars=self.max_prompt_chars)
        reports = []
        for path, raw in raws:
            t0, started = time.perf_counter(), _now()
            fdigest = file_digest(path)
            seen = self._seen_file(kind, fdigest, contract)
            if seen:
                # Same bytes, same contract: every row already landed or was quarantined in that batch.
                report = self._land(kind, str(path), fdigest, len(raw), raw.iloc[0:0], (), raw.iloc[0:0], (),
                                    len(raw), started, contract)
            else:
                result = (checked or {}).get((fdigest, contract))
                if result is None:
                    gx_ready()  # the one-time GX import/setup is not counted in the first file's time
                    t0 = time.perf_counter()
                    result = validate(raw, kind, max_prompt_chars=self.max_prompt_chars)
                report = self._land(kind, str(path), fdigest, len(raw), result.accepted, result.accepted_digests,
                                    result.quarantined, result.quarantined_digests, result.duplicates, started,
                                    contract)
            reports.append(IngestReport(**{**report.as_dict(), "seconds": time.perf_counter() - t0,
                                           "seen_before": seen, **_extra_notes(raw, kind)}))
        return reports

    def _seen_file(self, kind: str, fdigest: str, contract: str) -> bool:
        q = sa.select(BATCHES.c.batch_id).where(BATCHES.c.kind == kind, BATCHES.c.file_digest == fdigest,
                                                 BATCHES.c.contract_digest == contract).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def _append(self, kind: str, records: Sequence[Any], model: type) -> int:
        """The service path: pydantic-validated records, digested like file rows, inserted once (no pandas)."""
        from mixllm.contracts import record_digest

        try:
            recs = [r if isinstance(r, model) else model.model_validate(r) for r in records]
        except ValidationError as e:
            raise ContractError(f"invalid {kind} record: {e}") from e
        if not recs:
            return 0
        if kind == "log":
            too_long = [r.query_id for r in recs if len(r.prompt) > self.max_prompt_chars]
            if too_long:
                raise ContractError(f"prompt longer than max_prompt_chars={self.max_prompt_chars} for query_id "
                                    f"{too_long[:5]}; shorten it or raise MIXLLM_MAX_PROMPT_CHARS")
        batch_id = f"api-{datetime.now(timezone.utc):%Y%m%d}"
        rows: dict[str, dict[str, Any]] = {}
        for r in recs:
            values = r.model_dump()
            # A defaulted ts is not content: leave it out of the digest, as ingest does for files without ts.
            digest = record_digest({**values, "ts": r.ts if "ts" in r.model_fields_set else None}, kind)
            rows.setdefault(digest, {**values, "ts": _utc_naive(r.ts), "row_digest": digest, "batch_id": batch_id})
        table = INTERACTIONS if kind == "log" else FEEDBACK
        known = self._known(table, list(rows))
        new = [row for d, row in rows.items() if d not in known]
        try:
            with self.engine.begin() as conn:
                self._insert(conn, table, new)
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot append {kind} records to {self.url!r}: {e}") from e
        return len(new)

    def append_logs(self, records: Sequence[LogRecord | dict[str, Any]]) -> int:
        """Durably add service decisions/observations; returns how many were new. Safe from many threads.

        Rows get batch id ``api-YYYYMMDD`` (no ingest_batches record: that table is for files)."""
        return self._append("log", records, LogRecord)

    def append_feedback(self, records: Sequence[FeedbackRecord | dict[str, Any]]) -> int:
        """Durably add ratings; returns how many were new. Safe from many threads."""
        return self._append("feedback", records, FeedbackRecord)

    # ------------------------------------------------------------------ reading
    def _frame(self, query: sa.Select, columns: Sequence[str]) -> pd.DataFrame:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot read from {self.url!r}: {e}") from e
        df = pd.DataFrame([dict(r) for r in rows], columns=list(columns))
        for col in ("ts", "started_at", "finished_at", "quarantined_at"):
            if col in df:
                df[col] = pd.to_datetime(df[col]).dt.tz_localize("UTC")
        return df

    @staticmethod
    def _landed(table: sa.Table, columns: Sequence[str], since: datetime | None) -> sa.Select:
        """`columns` of `table` in landing order; only rows with ts >= `since` if given."""
        q = sa.select(*[table.c[c] for c in columns]).order_by(table.c.id)
        return q if since is None else q.where(table.c.ts >= _utc_naive(since))

    def logs(self, since: datetime | None = None, policy_only: bool = False, extra: bool = False) -> pd.DataFrame:
        """Accepted interaction rows, LOG_COLUMNS, in landing order; only those with ts >= `since` if given, and
        only decisions a policy made (propensity known: what off-policy evaluation reads) if `policy_only`;
        with `extra`, also EXTRA_COLUMN (the landing file's other columns, JSON text or None)."""
        cols = [*LOG_COLUMNS, EXTRA_COLUMN] if extra else list(LOG_COLUMNS)
        q = self._landed(INTERACTIONS, cols, since)
        if policy_only:
            q = q.where(INTERACTIONS.c.propensity.is_not(None))
        return self._typed_logs(self._frame(q, cols))

    @staticmethod
    def _typed_logs(df: pd.DataFrame) -> pd.DataFrame:
        for c in ("prompt_tokens", "completion_tokens"):
            df[c] = df[c].astype("Int64")
        for c in ("quality", "cost_usd", "latency_ms", "propensity"):
            df[c] = df[c].astype(float)
        return df

    def feedback(self, since: datetime | None = None, extra: bool = False) -> pd.DataFrame:
        """Accepted ratings, FEEDBACK_COLUMNS (and EXTRA_COLUMN with `extra`), in landing order; only those with
        ts >= `since` if given (the service replays what arrived after its version's training snapshot)."""
        cols = [*FEEDBACK_COLUMNS, EXTRA_COLUMN] if extra else list(FEEDBACK_COLUMNS)
        df = self._frame(self._landed(FEEDBACK, cols, since), cols)
        df["rating"] = df["rating"].astype(float)
        return df

    def feedback_snapshot(self) -> tuple[pd.DataFrame, str | None]:
        """Every accepted rating and a digest of exactly which rows they are (None when there are none), read
        once, for the training snapshot's lineage (see `mixllm.feedback.snapshot_digest`)."""
        cols = [*FEEDBACK_COLUMNS, "row_digest"]
        df = self._frame(sa.select(*[FEEDBACK.c[c] for c in cols]).order_by(FEEDBACK.c.id), cols)
        digests = sorted(df.pop("row_digest"))
        df["rating"] = df["rating"].astype(float)
        if not digests:
            return df, None
        h = hashlib.sha256()
        for d in digests:
            h.update(d.encode())
        return df, h.hexdigest()

    def quarantine(self, batch_id: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """Quarantined rows with the expectation that failed and why (newest batches last)."""
        cols = ["batch_id", "kind", "source", "row_number", "expectation", "column_name", "reason", "raw",
                "quarantined_at"]
        q = sa.select(*[QUARANTINE.c[c] for c in cols]).order_by(QUARANTINE.c.id)
        if batch_id:
            q = q.where(QUARANTINE.c.batch_id.startswith(batch_id, autoescape=True))
        if limit:
            q = q.limit(limit)
        return self._frame(q, cols)

    def batches(self) -> pd.DataFrame:
        cols = [c.name for c in BATCHES.columns]
        return self._frame(sa.select(BATCHES).order_by(BATCHES.c.started_at), cols)

    def snapshot(self) -> tuple[pd.DataFrame, str]:
        """The accepted interaction rows and a digest of exactly which rows they are (one read, for lineage)."""
        cols = [*LOG_COLUMNS, "row_digest"]
        df = self._frame(sa.select(*[INTERACTIONS.c[c] for c in cols]).order_by(INTERACTIONS.c.id), cols)
        h = hashlib.sha256()
        for d in sorted(df.pop("row_digest")):
            h.update(d.encode())
        return self._typed_logs(df), h.hexdigest()

    def dispose(self) -> None:
        self.engine.dispose()


def _extra_notes(raw: pd.DataFrame, kind: str) -> dict[str, tuple[str, ...]]:
    """IngestReport fields naming a file's columns beyond the contract (kept as metadata, not checked)."""
    from mixllm.data import EXTRA_ATTR, near_misses

    extra = tuple(raw.attrs.get(EXTRA_ATTR, ()))
    if not extra:
        return {}
    note = (f"kept as metadata (column {EXTRA_COLUMN!r}, not checked, not part of a row's identity): "
            f"{list(extra)}{near_misses(extra, LOG_COLUMNS if kind == 'log' else FEEDBACK_COLUMNS)}")
    return {"extra_columns": extra, "notes": (note,)}


def _add_missing_columns(engine: sa.Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for each nullable column a store created by an older mixllm lacks.

    Another process opening the same store may add it first: the column then exists and its error is ignored."""
    for table_name, names in _ADDED_COLUMNS.items():
        table = META.tables[table_name]
        for name in names:
            if name in {c["name"] for c in sa.inspect(engine).get_columns(table_name)}:
                continue
            col_type = table.c[name].type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'ALTER TABLE {table_name} ADD COLUMN "{name}" {col_type}'))
            except sa.exc.SQLAlchemyError:
                if name not in {c["name"] for c in sa.inspect(engine).get_columns(table_name)}:
                    raise


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers and one writer work at once; busy_timeout makes concurrent writers wait, not fail."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
