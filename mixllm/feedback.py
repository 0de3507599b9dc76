"""Feedback into training data: each rating becomes the quality label of the (query, model) decision it rates.

The service logs one row per decision (the chosen model, usually without an observed quality) and, later, users'
ratings of those decisions. The nightly snapshot joins the two here, so what users say trains the next router:

- a rating in [0, 1] maps to a quality label through `RatingMapping` (thumbs 0/1, graded ratings in between);
- an observed quality (a benchmark row, an automatic grader) outranks any rating: the rating is set aside;
- per (query, model) the latest rating wins, and each source's repeated ratings collapse to its latest;
- one source contributes at most `FeedbackConfig.max_labels_per_source` rated decisions to a snapshot;
- a rating of a decision that is not in the log, dated before its decision or in the future, or with an invalid
  value is never silently dropped: it is returned in `aside` with the reason;
- labelled rows keep `propensity` and `router_version` (off-policy training weights them by 1 / propensity);
  decisions nobody rated keep a null quality and stay out of quality training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixllm.schemas import FEEDBACK_COLUMNS

LABEL_SOURCE = "label_source"  # "observed" | "rating" | None (no label: not used for quality training)
RATING_SOURCES = "rating_sources"  # how many distinct sources rated the decision (after collapsing repeats)
FEEDBACK_ATTR = "mixllm_feedback"  # DataFrame.attrs key of a snapshot: LabelledDecisions.summary() + feedback digest
ASIDE_COLUMNS = (*FEEDBACK_COLUMNS, "reason")


class RatingMapping(BaseModel):
    """rating -> quality label. `down`/`up` are the labels of a thumbs-down (0) and a thumbs-up (1); a graded
    rating in between is mapped linearly, or to `down`/`up` by a threshold (for a binary quality target).

    `noise`: the share of ratings that contradict the answer (a thumbs-down on a right answer or the reverse),
    e.g. measured by grading a sample of rated answers. With noise e a thumbs-up has expectation e + (1 - 2e) q,
    pulled toward 1/2: LLMs the service uses often (hence rated often) would look worse than LLMs known from clean
    benchmark rows, and the next router would drift away from them. The label is therefore the unbiased
    (r - e) / (1 - 2e) (Natarajan et al., 2013), which lies outside [0, 1] (e = 0.1: -0.125 and 1.125); averages
    of such labels estimate the true quality, and predictions are clipped to [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    down: float = Field(default=0.0, ge=0.0, le=1.0)
    up: float = Field(default=1.0, ge=0.0, le=1.0)
    graded: Literal["linear", "threshold"] = "linear"
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    noise: float | None = Field(default=None, ge=0.0, lt=0.5, description="share of contradicting ratings; "
                                "None: 0 (left out of snapshot digests, so earlier digests stay valid)")

    @model_validator(mode="after")
    def _up_is_better(self) -> "RatingMapping":
        if self.up <= self.down:
            raise ValueError(f"a thumbs-up must map above a thumbs-down (up={self.up}, down={self.down})")
        return self

    def quality(self, rating: np.ndarray | pd.Series) -> np.ndarray:
        r = np.asarray(rating, float)
        if self.graded == "threshold":
            r = np.where(r >= self.threshold, 1.0, 0.0)
        e = self.noise or 0.0
        r = (r - e) / (1.0 - 2.0 * e)
        return self.down + (self.up - self.down) * r


class FeedbackConfig(BaseModel):
    """How the snapshot turns feedback into labels (PipelineConfig.feedback)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mapping: RatingMapping = Field(default_factory=RatingMapping)
    max_clock_skew_seconds: float = Field(default=300.0, ge=0.0, description=(
        "a rating may be dated this much before its decision (clocks of service and clients differ); earlier ones, "
        "and ratings dated this much after the snapshot time, are set aside"))
    max_labels_per_source: int | None = Field(default=None, gt=0, description=(
        "at most this many rated decisions of one feedback source enter a snapshot (its latest ones; the rest are "
        "set aside as 'capped'), so no single client, bot or tenant can outweigh everybody else's ratings; "
        "None: no cap"))


@dataclass(frozen=True)
class LabelledDecisions:
    """The training rows (log rows, quality filled from ratings), the ratings used and the ones set aside."""

    rows: pd.DataFrame  # LOG_COLUMNS + LABEL_SOURCE + RATING_SOURCES, in log order
    used: pd.DataFrame  # FEEDBACK_COLUMNS: the rating that labelled each rated decision
    aside: pd.DataFrame  # ASIDE_COLUMNS: every other feedback row, with why it is not a label
    per_model: dict[str, int] = field(default_factory=dict)  # decisions labelled by a rating, per model

    def summary(self) -> dict[str, Any]:
        """Counts for the run log: labels per model and per source, and feedback set aside per reason."""
        src = self.rows[LABEL_SOURCE].value_counts().to_dict() if len(self.rows) else {}
        return {"labelled_by_rating": int(src.get("rating", 0)), "observed": int(src.get("observed", 0)),
                "unlabelled": int(self.rows[LABEL_SOURCE].isna().sum()), "per_model": dict(self.per_model),
                "aside": {str(k): int(v) for k, v in self.aside["reason"].value_counts().items()}
                if len(self.aside) else {}}


def _aside(frame: pd.DataFrame, reason: str | pd.Series) -> pd.DataFrame:
    out = frame.loc[:, list(FEEDBACK_COLUMNS)].copy()
    out["reason"] = reason
    return out


def _invalid(fb: pd.DataFrame, now: pd.Timestamp, skew: pd.Timedelta) -> pd.Series:
    """Why each feedback row cannot be a label at all ('' when it can): refused whatever the log says."""
    rating = pd.to_numeric(fb["rating"], errors="coerce")
    why = pd.Series("", index=fb.index, dtype=object)
    for col in ("query_id", "model", "source"):
        blank = fb[col].isna() | (fb[col].astype(str).str.strip() == "")
        why = why.mask(blank & (why == ""), f"invalid: empty {col}")
    why = why.mask(~np.isfinite(rating.to_numpy(float)) & (why == ""), "invalid: rating is not a number")
    why = why.mask(((rating < 0) | (rating > 1)) & (why == ""), "invalid: rating outside [0, 1]")
    why = why.mask(fb["ts"].isna() & (why == ""), "invalid: no timestamp")
    why = why.mask((fb["ts"] > now + skew) & (why == ""), "refused: rating dated in the future")
    return why


def label_decisions(logs: pd.DataFrame, feedback: pd.DataFrame, config: FeedbackConfig | None = None,
                    now: datetime | None = None) -> LabelledDecisions:
    """Join `feedback` (FEEDBACK_COLUMNS, e.g. `Store.feedback()`) to the decisions in `logs` (LOG_COLUMNS)."""
    cfg = config or FeedbackConfig()
    rows = logs.reset_index(drop=True).copy()
    rows[LABEL_SOURCE] = pd.Series(np.where(rows["quality"].notna(), "observed", None), dtype=object)
    rows[RATING_SOURCES] = 0
    empty = pd.DataFrame(columns=list(FEEDBACK_COLUMNS))
    if feedback is None or feedback.empty:
        return LabelledDecisions(rows, empty, pd.DataFrame(columns=list(ASIDE_COLUMNS)), {})
    fb = feedback.reset_index(drop=True).loc[:, list(FEEDBACK_COLUMNS)].copy()
    fb["ts"] = pd.to_datetime(fb["ts"], utc=True, errors="coerce")
    skew = pd.Timedelta(seconds=cfg.max_clock_skew_seconds)
    why = _invalid(fb, pd.Timestamp(now or datetime.now(timezone.utc)), skew)
    aside = [_aside(fb[why != ""], why[why != ""])]
    fb = fb[why == ""].copy()
    fb["rating"] = fb["rating"].astype(float)
    fb["_order"] = np.arange(len(fb))  # landing order breaks ties between equal timestamps
    fb = fb.sort_values(["ts", "_order"], kind="stable")

    # Each source counts once per decision: its latest rating.
    repeat = fb.duplicated(["query_id", "model", "source"], keep="last")
    aside.append(_aside(fb[repeat], "superseded: a later rating of this decision from the same source"))
    fb = fb[~repeat]
    decision = rows.assign(_obs=rows["quality"].notna()).groupby(["query_id", "model"], sort=False).agg(
        first_ts=("ts", "min"), observed=("_obs", "any"))
    key = pd.MultiIndex.from_frame(fb[["query_id", "model"]].astype(str))
    known = key.isin(decision.index)
    aside.append(_aside(fb[~known], "unmatched: no logged decision for this (query_id, model)"))
    fb, key = fb[known], key[known]
    first_ts = decision["first_ts"].reindex(key).to_numpy()
    early = (fb["ts"].to_numpy() < pd.to_datetime(first_ts, utc=True) - skew)
    aside.append(_aside(fb[early], "refused: rating dated before the decision it rates"))
    fb, key = fb[~early], key[~early]
    observed = decision["observed"].reindex(key).to_numpy(bool)
    aside.append(_aside(fb[observed], "outranked: the decision has an observed quality"))
    fb = fb[~observed]
    if cfg.max_labels_per_source is not None:
        # Counted on the ratings that could label a decision, so the cap bounds what a source contributes (a
        # later rating of another source may still supersede one of the kept ones). fb is in time order.
        over = fb.groupby("source", sort=False).cumcount(ascending=False).to_numpy() >= cfg.max_labels_per_source
        aside.append(_aside(fb[over], f"capped: the source rated more than max_labels_per_source="
                                      f"{cfg.max_labels_per_source} decisions; its latest ones count"))
        fb = fb[~over]

    n_sources = fb.groupby(["query_id", "model"]).size()
    latest = fb.duplicated(["query_id", "model"], keep="last")
    aside.append(_aside(fb[latest], "superseded: a later rating of this decision from another source"))
    used = fb[~latest].drop(columns="_order")
    labels = pd.Series(cfg.mapping.quality(used["rating"]), index=pd.MultiIndex.from_frame(
        used[["query_id", "model"]].astype(str)))
    rkey = pd.MultiIndex.from_frame(rows[["query_id", "model"]].astype(str))
    rated = rkey.isin(labels.index) & rows["quality"].isna().to_numpy()
    rows.loc[rated, "quality"] = labels.reindex(rkey[rated]).to_numpy()
    rows.loc[rated, LABEL_SOURCE] = "rating"
    rows.loc[rated, RATING_SOURCES] = n_sources.reindex(rkey[rated]).to_numpy()
    per_model = {str(k): int(v) for k, v in rows.loc[rated, "model"].value_counts().sort_index().items()}
    parts = [a for a in aside if len(a)]
    aside_df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(ASIDE_COLUMNS))
    return LabelledDecisions(rows, used.reset_index(drop=True), aside_df, per_model)


def snapshot_digest(log_digest: str, feedback_digest: str | None, config: FeedbackConfig | None = None) -> str:
    """The digest of a training snapshot: the log rows, and, when there is feedback, the feedback rows and the
    mapping that turned them into labels (another mapping gives other labels, so another snapshot). Without
    feedback it is the log digest unchanged, so snapshots taken before feedback existed keep their digests."""
    if not feedback_digest:
        return log_digest
    # The cap is left out while unset so digests of snapshots taken before it existed stay the same.
    mapping = (config or FeedbackConfig()).model_dump(mode="json", exclude_none=True)
    text = json.dumps({"log": log_digest, "feedback": feedback_digest, "labels": mapping}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def labelled_counts(rows: pd.DataFrame) -> dict[str, float]:
    """Metrics for the run: decisions labelled by a rating per model (``labelled_decisions/<model>``), in total,
    and how many rows carry an observed quality. Reads the label column only, so it works on any snapshot."""
    if LABEL_SOURCE not in rows:
        return {}
    rated = rows[rows[LABEL_SOURCE] == "rating"]
    out: dict[str, float] = {f"labelled_decisions/{_metric_safe(m)}": float(n)
                             for m, n in rated["model"].value_counts().sort_index().items()}
    out["labelled_decisions_total"] = float(len(rated))
    out["observed_rows"] = float((rows[LABEL_SOURCE] == "observed").sum())
    return out


def _metric_safe(name: Any) -> str:
    """MLflow metric names allow letters, digits, _ - . space / only."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in str(name))


__all__ = ["ASIDE_COLUMNS", "FEEDBACK_ATTR", "FeedbackConfig", "LABEL_SOURCE", "LabelledDecisions", "RATING_SOURCES",
           "RatingMapping", "label_decisions", "labelled_counts", "snapshot_digest"]
