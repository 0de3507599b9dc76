"""Validate interaction logs and feedback against the Great Expectations suites in ``mixllm/defaults/contracts/``.

The suites are the single source of the rules: this module only prepares the frame GX sees and turns GX's
per-row failures into quarantine records. GX checks the *raw* cell values (strings from CSV, JSON values, Parquet
values), so a wrong type ("abc", -3.5 tokens, "NaN") fails a regex expectation instead of being coerced to null.
Range checks need numbers, so for every ``<col>__number`` / ``<col>__utc`` column a suite names, the raw column is
parsed here (unparseable -> null, which the range check skips and the regex on the raw cell reports).

GX costs seconds to import: it is imported on first validation and the context is cached per process.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from mixllm.exceptions import ContractError
from mixllm.schemas import EXTRA_COLUMN, FEEDBACK_COLUMNS, LOG_COLUMNS, LOG_OPTIONAL_COLUMNS

# Package data (the wheel carries the suites): found through importlib.resources, never a path into a checkout.
CONTRACTS_DIR = resources.files("mixllm.defaults").joinpath("contracts")
SUITES = {"log": "interaction_log", "feedback": "feedback"}
COLUMNS = {"log": LOG_COLUMNS, "feedback": FEEDBACK_COLUMNS}
OPTIONAL = {"log": LOG_OPTIONAL_COLUMNS, "feedback": ()}  # enter a row's digest only when not null
NUMBER_SUFFIX, UTC_SUFFIX = "__number", "__utc"
INT_COLUMNS = {"prompt_tokens", "completion_tokens"}
_NULL = "\x00"
_GX_LOCK = threading.RLock()  # GX validators are not documented as thread-safe: one validation at a time


@dataclass(frozen=True)
class ValidationResult:
    """Rows that met the contract (typed, canonical columns) and rows that did not (raw row + why)."""

    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    accepted_digests: tuple[str, ...] = ()
    quarantined_digests: tuple[str, ...] = ()
    duplicates: int = 0  # rows identical to an earlier row of the same input (not validated, not returned)


@lru_cache(maxsize=None)
def suite_dict(kind: str) -> dict[str, Any]:
    """The suite JSON for `kind` ("log" or "feedback"), as stored in mixllm/defaults/contracts/."""
    path = CONTRACTS_DIR / f"{SUITES[kind]}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ContractError(f"cannot load the data contract {path}: {e}; reinstall mixllm") from e


def contract_digest(kind: str, **params: Any) -> str:
    """Digest of the suite file and the parameters it is run with: which rules a batch was checked against."""
    text = json.dumps({"suite": suite_dict(kind), "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def suite_columns(kind: str) -> set[str]:
    """Every column some expectation of the suite looks at (derived columns included)."""
    cols: set[str] = set()
    for exp in suite_dict(kind)["expectations"]:
        kw = exp["kwargs"]
        cols.update([kw["column"]] if "column" in kw else kw.get("column_list", []))
    return cols


def required_columns(kind: str) -> tuple[str, ...]:
    """Columns a file must have: those the suite says may not be null (read from the suite, not restated)."""
    return tuple(exp["kwargs"]["column"] for exp in suite_dict(kind)["expectations"]
                 if exp["type"] == "expect_column_values_to_not_be_null"
                 and exp["kwargs"]["column"] in COLUMNS[kind])


def _to_number(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return math.nan


def _to_utc(v: Any) -> pd.Timestamp | None:
    if isinstance(v, (datetime, pd.Timestamp)):
        ts = pd.Timestamp(v)
    elif isinstance(v, str) and v.strip():
        try:
            ts = pd.Timestamp(v.strip())
        except (ValueError, OverflowError):
            return None
    else:
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT


def _raw_values(col: pd.Series) -> list[Any]:
    """Cells with missing as None. In a typed (numeric/datetime) column NaN is pandas' null; in a raw (object)
    column a float NaN is a value the file really holds (Parquet NaN, JSON NaN) and the contract rejects it."""
    if col.dtype == object:  # GX would skip a NaN as null: hand it over as its text so the regex reports it
        return [None if _is_missing(v) else ("nan" if isinstance(v, float) and math.isnan(v) else v) for v in col]
    return [None if pd.isna(v) else v for v in col]


def prepare(raw: pd.DataFrame, kind: str, default_ts: datetime | None = None) -> pd.DataFrame:
    """Raw frame (object columns) plus the derived columns the suite names; index = raw row number."""
    # A frame built before the OPTIONAL columns existed (no such column at all) means null there, not an error.
    frame = pd.DataFrame({c: _raw_values(raw[c]) if c in raw or c not in OPTIONAL[kind] else [None] * len(raw)
                          for c in COLUMNS[kind]}, index=raw.index, dtype=object)
    default = pd.Timestamp(default_ts or datetime.now(timezone.utc)).tz_convert("UTC")
    for col in sorted(suite_columns(kind)):
        if col.endswith(NUMBER_SUFFIX):
            frame[col] = np.array([_to_number(v) for v in frame[col.removesuffix(NUMBER_SUFFIX)]], dtype=float)
        elif col.endswith(UTC_SUFFIX):
            base = frame[col.removesuffix(UTC_SUFFIX)]
            parsed = [default if v is None else _to_utc(v) for v in base]
            frame[col] = pd.to_datetime(pd.Series(parsed, index=frame.index, dtype=object), utc=True)
    return frame


@lru_cache(maxsize=None)
def _parsers(kind: str) -> dict[str, str]:
    """column -> "number" | "utc" | "text": how the suite reads each canonical column (for digests)."""
    cols = suite_columns(kind)
    return {c: "number" if f"{c}{NUMBER_SUFFIX}" in cols else "utc" if f"{c}{UTC_SUFFIX}" in cols else "text"
            for c in COLUMNS[kind]}


def _cell_key(how: str, raw: Any, parsed: Any) -> str:
    """Canonical text of one cell: numbers by value ("1" == "1.0"), timestamps in UTC, anything odd as its repr."""
    if raw is None:
        return _NULL
    if how == "number":
        return repr(float(parsed)) if math.isfinite(parsed) else f"raw:{raw!r}"
    if how == "utc":
        return parsed.isoformat() if parsed is not None and parsed is not pd.NaT else f"raw:{raw!r}"
    return raw if isinstance(raw, str) else f"raw:{raw!r}"


def _digest(kind: str, keys: Iterable[str]) -> str:
    """Digest of one row's cell keys (in `_parsers` order). Columns added after contract version 1 (OPTIONAL) are
    left out when null and named when present, so a row without them keeps the digest it always had."""
    parsers = _parsers(kind)
    if OPTIONAL[kind]:
        keys = [k if c not in OPTIONAL[kind] else f"{c}={k}" for c, k in zip(parsers, keys)
                if c not in OPTIONAL[kind] or k != _NULL]
    return hashlib.sha256(f"{kind}\x1e{chr(31).join(keys)}".encode("utf-8", "surrogatepass")).hexdigest()


def row_digests(frame: pd.DataFrame, kind: str) -> list[str]:
    """Content digest per prepared row; ts only when the source gave one (an ingest-time default is not content)."""
    columns = []
    for col, how in _parsers(kind).items():
        parsed = frame[f"{col}{NUMBER_SUFFIX}"] if how == "number" else (
            frame[f"{col}{UTC_SUFFIX}"] if how == "utc" else frame[col])
        columns.append([_cell_key(how, r, p) for r, p in zip(frame[col], parsed)])
    return [_digest(kind, keys) for keys in zip(*columns)] if len(frame) else []


def record_digest(values: dict[str, Any], kind: str) -> str:
    """The same digest for one record given as a dict of raw values (no pandas: the service's hot path)."""
    keys = []
    for col, how in _parsers(kind).items():
        raw = values.get(col)
        parsed = _to_number(raw) if how == "number" else (_to_utc(raw) if how == "utc" else raw)
        keys.append(_cell_key(how, raw, parsed))
    return _digest(kind, keys)


@lru_cache(maxsize=1)
def _gx() -> tuple[Any, dict[str, Any]]:
    """One ephemeral GX context per process with both suites loaded from the JSON files."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = ctx.data_sources.add_pandas("mixllm").add_dataframe_asset("rows")
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    suites = {}
    for kind in SUITES:
        try:
            suites[kind] = ctx.suites.add(gx.ExpectationSuite(**suite_dict(kind)))
        except Exception as e:  # GX raises many types for a malformed suite
            raise ContractError(f"data contract {SUITES[kind]}.json is not a valid GX suite: {e}") from e
    return batch_def, suites


def gx_ready() -> None:
    """Import GX and load the suites now (seconds, once per process) rather than inside the first validation."""
    with _GX_LOCK:
        _gx()


def _failures(frame: pd.DataFrame, kind: str, params: dict[str, Any]) -> dict[Any, list[tuple[str, str, Any]]]:
    """Row index -> [(expectation type, column, raw value)] for every failed expectation."""
    gx_frame = frame.reset_index(drop=True)
    with _GX_LOCK:
        batch_def, suites = _gx()
        result = batch_def.get_batch(batch_parameters={"dataframe": gx_frame}).validate(
            suites[kind], result_format="COMPLETE", expectation_parameters=params)
    out: dict[Any, list[tuple[str, str, Any]]] = {}
    for r in result.results:
        cfg = r.expectation_config
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise ContractError(f"expectation {cfg.type} could not run: "
                                f"{r.exception_info.get('exception_message')}")
        if r.success:
            continue
        column = cfg.kwargs.get("column") or "+".join(cfg.kwargs.get("column_list", []))
        base = column.removesuffix(NUMBER_SUFFIX).removesuffix(UTC_SUFFIX)
        for pos in r.result.get("unexpected_index_list") or []:
            idx = frame.index[int(pos)]
            value = frame.at[idx, base] if base in frame else {c: frame.at[idx, c] for c in base.split("+")}
            out.setdefault(idx, []).append((cfg.type, base, value))
    return out


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} chars)"


def typed(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Canonical typed columns from a prepared frame (only meaningful for rows that met the contract)."""
    out = pd.DataFrame(index=frame.index)
    for col in COLUMNS[kind]:
        if f"{col}{NUMBER_SUFFIX}" in frame:
            num = frame[f"{col}{NUMBER_SUFFIX}"].astype(float)
            out[col] = num.round().astype("Int64") if col in INT_COLUMNS else num
        elif f"{col}{UTC_SUFFIX}" in frame:
            out[col] = frame[f"{col}{UTC_SUFFIX}"]
        else:
            out[col] = frame[col].astype(object)
    if kind == "feedback":
        out["source"] = out["source"].where(out["source"].notna(), "file")
    return out.reset_index(drop=True)


def validate(raw: pd.DataFrame, kind: str, *, max_prompt_chars: int | None = None,
             default_ts: datetime | None = None, prepared: pd.DataFrame | None = None) -> ValidationResult:
    """Validate raw rows against the `kind` suite; every row ends up in exactly one of accepted / quarantined.

    A raw EXTRA_COLUMN (a file's columns beyond the contract, as JSON) is carried along unchecked with its row; it
    takes no part in the checks or the row digest, so identical contract columns are one row whatever it holds.

    Called once per file by a night: the landing check's result is handed to `Store.ingest` (keyed by the file's
    digest and the contract), which validates only files it was not handed."""
    if max_prompt_chars is None:
        from mixllm.config import get_settings

        max_prompt_chars = get_settings().max_prompt_chars
    return _validate(raw, kind, max_prompt_chars, default_ts, prepared)


def _validate(raw: pd.DataFrame, kind: str, max_prompt_chars: int, default_ts: datetime | None,
              prepared: pd.DataFrame | None) -> ValidationResult:
    frame = prepared if prepared is not None else prepare(raw, kind, default_ts)
    digests = pd.Series(row_digests(frame, kind), index=frame.index, dtype=object)
    repeated = digests.duplicated(keep="first").to_numpy()
    frame, digests = frame.loc[~repeated], digests[~repeated]
    failures = _failures(frame, kind, {"max_prompt_chars": max_prompt_chars}) if len(frame) else {}
    bad = frame.index.isin(list(failures))
    quarantined = frame.loc[bad, list(COLUMNS[kind])].copy()
    quarantined["expectation"] = [",".join(dict.fromkeys(f[0] for f in failures[i])) for i in quarantined.index]
    quarantined["column"] = [",".join(dict.fromkeys(f[1] for f in failures[i])) for i in quarantined.index]
    quarantined["reason"] = ["; ".join(f"{t}({c}): got {_short(v)}" for t, c, v in failures[i])
                             for i in quarantined.index]
    quarantined.insert(0, "row", quarantined.index)
    accepted = typed(frame.loc[~bad], kind)
    if EXTRA_COLUMN in raw:
        # object dtype: pandas would infer a string dtype and turn a row without extras (None) into NaN
        accepted[EXTRA_COLUMN] = pd.Series(raw.loc[frame.index[~bad], EXTRA_COLUMN].to_numpy(), dtype=object)
        quarantined[EXTRA_COLUMN] = pd.Series(raw.loc[quarantined.index, EXTRA_COLUMN].to_numpy(),
                                              index=quarantined.index, dtype=object)
    return ValidationResult(
        accepted=accepted,
        quarantined=quarantined.reset_index(drop=True),
        accepted_digests=tuple(digests[~bad]),
        quarantined_digests=tuple(digests[bad]),
        duplicates=int(repeated.sum()),
    )


def validate_log(df: pd.DataFrame, **kwargs: Any) -> ValidationResult:
    """Validate interaction-log rows (raw LOG_COLUMNS) against the packaged interaction_log.json suite."""
    return validate(df, "log", **kwargs)


def validate_feedback(df: pd.DataFrame, **kwargs: Any) -> ValidationResult:
    """Validate feedback rows (raw FEEDBACK_COLUMNS) against the packaged feedback.json suite."""
    return validate(df, "feedback", **kwargs)
