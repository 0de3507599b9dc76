"""Shadow decisions: what the challenger would have chosen on live traffic the champion answered, and the report.

The service samples champion-routed requests into its spool; a low-priority process (`mixllm.serving.
shadow_worker`) lets the challenger decide them and writes one `ShadowRecord` per request to the store's
``shadow_decisions`` table (defined here, on the store's engine, so the store module stays the interaction log's).
Nothing here runs on the request path.

The report answers "would the challenger route my traffic differently, and would that be better?": agreement, the
predicted quality and cost deltas (each router's own prediction of its own choice, and the challenger's prediction
of both choices, which isolates the choice from the two predictors' calibration), and, when asked, the off-policy
estimate of the challenger's value on the champion's labelled decisions with its interval (`mixllm.ope`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from mixllm.exceptions import StoreError

SHADOW_META = sa.MetaData()
SHADOW = sa.Table(
    "shadow_decisions", SHADOW_META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False, unique=True),
    sa.Column("ts", sa.DateTime, nullable=False, index=True),  # when the champion answered (naive UTC)
    sa.Column("decided_at", sa.DateTime, nullable=False),  # when the challenger decided it
    sa.Column("willingness_to_pay", sa.Float, nullable=False),
    sa.Column("champion_version", sa.Text, nullable=False),
    sa.Column("challenger_version", sa.Text, nullable=False),
    sa.Column("challenger_ref", sa.Text),  # registry version (or local stamp) of the challenger
    sa.Column("champion_model", sa.Text, nullable=False),
    sa.Column("challenger_model", sa.Text, nullable=False),
    sa.Column("agree", sa.Boolean, nullable=False),
    sa.Column("champion_quality", sa.Float),  # champion's prediction for its own choice
    sa.Column("champion_cost", sa.Float),
    sa.Column("challenger_quality", sa.Float),  # challenger's prediction for its own choice
    sa.Column("challenger_cost", sa.Float),
    sa.Column("challenger_on_champion_quality", sa.Float),  # challenger's prediction for the champion's choice
    sa.Column("challenger_on_champion_cost", sa.Float),
)
COLUMNS = tuple(c.name for c in SHADOW.columns if c.name != "id")


class ShadowRecord(BaseModel):
    """One request decided by both routers (typed once: the worker writes it, the report reads its columns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=200)
    ts: datetime
    decided_at: datetime
    willingness_to_pay: float = Field(gt=0, allow_inf_nan=False)
    champion_version: str = Field(min_length=1)
    challenger_version: str = Field(min_length=1)
    challenger_ref: str | None = None
    champion_model: str = Field(min_length=1)
    challenger_model: str = Field(min_length=1)
    agree: bool
    champion_quality: float | None = None
    champion_cost: float | None = None
    challenger_quality: float | None = None
    challenger_cost: float | None = None
    challenger_on_champion_quality: float | None = None
    challenger_on_champion_cost: float | None = None


def _naive_utc(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts


def ensure_table(store: Any) -> None:
    """Create ``shadow_decisions`` in the store's database if it is not there (idempotent, any process)."""
    try:
        SHADOW_META.create_all(store.engine)
    except sa.exc.SQLAlchemyError as e:
        raise StoreError(f"cannot create the shadow table in {store.url!r}: {e}") from e


def append(store: Any, records: Sequence[ShadowRecord]) -> int:
    """Insert shadow records once each (a request id already stored is skipped); returns how many were sent."""
    if not records:
        return 0
    ensure_table(store)
    rows = [{**r.model_dump(), "ts": _naive_utc(r.ts), "decided_at": _naive_utc(r.decided_at)} for r in records]
    try:
        with store.engine.begin() as conn:
            conn.execute(_insert_or_ignore(conn.dialect.name), rows)
    except sa.exc.SQLAlchemyError as e:
        raise StoreError(f"cannot write shadow decisions to {store.url!r}: {e}") from e
    return len(rows)


def _insert_or_ignore(dialect: str) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise StoreError(f"unsupported store backend {dialect!r}; use sqlite or postgresql")
    return insert(SHADOW).on_conflict_do_nothing(index_elements=["request_id"])


def read(store: Any, since: datetime | None = None) -> pd.DataFrame:
    """Shadow decisions (oldest first), only those with ts >= `since` when given; ts columns in UTC."""
    ensure_table(store)
    q = sa.select(*[SHADOW.c[c] for c in COLUMNS]).order_by(SHADOW.c.id)
    if since is not None:
        q = q.where(SHADOW.c.ts >= _naive_utc(since))
    df = store._frame(q, COLUMNS)  # the store's own reader: StoreError on failure, `ts` in UTC
    df["decided_at"] = pd.to_datetime(df["decided_at"]).dt.tz_localize("UTC")
    df["agree"] = df["agree"].astype(bool)
    return df


# ------------------------------------------------------------------------------------------------ report ---
@dataclass
class ShadowReport:
    """Agreement and predicted deltas of the challenger against the champion on the same requests."""

    n: int
    champion_versions: list[str]
    challenger_versions: list[str]
    agreement: float = float("nan")
    delta_quality: float = float("nan")  # challenger's predicted quality of its choice - champion's of its own
    delta_cost: float = float("nan")
    choice_delta_quality: float = float("nan")  # challenger's predictions: its choice - the champion's choice
    choice_delta_cost: float = float("nan")
    switches: dict[str, int] = field(default_factory=dict)  # "champion_model -> challenger_model": count (top 10)
    since: str | None = None
    ope: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {"shadow/n": float(self.n), "shadow/agreement": self.agreement,
               "shadow/delta_quality": self.delta_quality, "shadow/delta_cost_usd": self.delta_cost,
               "shadow/choice_delta_quality": self.choice_delta_quality,
               "shadow/choice_delta_cost_usd": self.choice_delta_cost}
        return {**out, **self.ope}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        if not self.n:
            return "no shadow decisions" + (f" since {self.since}" if self.since else "") + \
                " (is MIXLLM_SHADOW_SAMPLE > 0 and a challenger registered?)"
        lines = [f"shadow decisions: {self.n} (champion {', '.join(self.champion_versions)}; challenger "
                 f"{', '.join(self.challenger_versions)})",
                 f"agreement: {self.agreement:.1%}",
                 f"predicted quality delta (challenger - champion, own predictions): {self.delta_quality:+.4f}",
                 f"predicted cost delta per request (USD): {self.delta_cost:+.6f}",
                 f"challenger's view of the switch: quality {self.choice_delta_quality:+.4f}, cost "
                 f"{self.choice_delta_cost:+.6f} USD"]
        if self.switches:
            lines.append("most frequent switches: " + ", ".join(f"{k} ({v})" for k, v in self.switches.items()))
        if self.ope:
            lines.append(_ope_text(self.ope))
        return "\n".join(lines)


def _ope_text(ope: dict[str, float]) -> str:
    n = int(ope.get("ope/n_labelled", 0))
    if "ope/candidate/dr" not in ope:
        return f"off-policy estimate: no labelled champion decisions to evaluate on ({n})"
    text = (f"off-policy (DR) on {n} labelled decisions: challenger {ope['ope/candidate/dr']:.4f} "
            f"[{ope['ope/candidate/dr_low']:.4f}, {ope['ope/candidate/dr_high']:.4f}]")
    if "ope/diff/dr" in ope:
        text += (f", minus champion {ope['ope/diff/dr']:+.4f} [{ope['ope/diff/dr_low']:+.4f}, "
                 f"{ope['ope/diff/dr_high']:+.4f}]")
    return text + f" (logged policy earned {ope.get('ope/logged_value', float('nan')):.4f})"


def _mean(s: pd.Series) -> float:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return float(v.mean()) if len(v) else float("nan")


def report(rows: pd.DataFrame, since: datetime | None = None) -> ShadowReport:
    """The shadow report of `read(...)` rows (without the off-policy part, which needs the routers)."""
    out = ShadowReport(len(rows), sorted(map(str, rows["champion_version"].unique())),
                       sorted(map(str, rows["challenger_version"].unique())),
                       since=since.isoformat() if since else None)
    if not len(rows):
        return out
    out.agreement = float(np.mean(rows["agree"].to_numpy(bool)))
    out.delta_quality = _mean(rows["challenger_quality"] - rows["champion_quality"])
    out.delta_cost = _mean(rows["challenger_cost"] - rows["champion_cost"])
    out.choice_delta_quality = _mean(rows["challenger_quality"] - rows["challenger_on_champion_quality"])
    out.choice_delta_cost = _mean(rows["challenger_cost"] - rows["challenger_on_champion_cost"])
    moved = rows[~rows["agree"]]
    pairs = (moved["champion_model"] + " -> " + moved["challenger_model"]).value_counts().head(10)
    out.switches = {str(k): int(v) for k, v in pairs.items()}
    return out


def write(rep: ShadowReport, path: Any) -> Any:
    """The report as JSON (what the MLflow run keeps)."""
    path.write_text(json.dumps(rep.as_dict(), indent=1, default=str), encoding="utf-8")
    return path
