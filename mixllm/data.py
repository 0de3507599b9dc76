"""Read interaction logs and feedback from files into canonical (unvalidated) frames.

Readers keep the raw cell values (CSV cells as strings, JSON and Parquet values as they are) so the data contract
can tell "missing" (null, allowed for nullable columns) from "wrong" ("abc" as a quality). RouterBench's wide CSV
(one row per query, one column group per model) is detected from its columns and turned into canonical rows.
"""

from __future__ import annotations

import ast
import difflib
import gzip
import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixllm.catalogue import estimate_tokens
from mixllm.exceptions import ContractError
from mixllm.schemas import EXTRA_COLUMN, FEEDBACK_COLUMNS, LOG_COLUMNS

SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".parquet")
_SIMPLE_LIST = re.compile(r"^\['([^'\\]*)'\]$")
ROUTERBENCH_KEYS = ("sample_id", "prompt", "eval_name")
COST_SUFFIX, RESPONSE_SUFFIX = "|total_cost", "|model_response"
# RouterBench has no timestamps; load_routerbench stamps its rows with the paper's release date so the frame is
# the same on every call (ingest stamps them with the ingest time instead, like any log without a ts column).
ROUTERBENCH_TS = datetime(2024, 3, 18, tzinfo=timezone.utc)
EXTRA_ATTR = "mixllm_extra_columns"  # DataFrame.attrs key: the file's columns beyond the contract, in file order


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    raise ContractError(f"{path}: unknown file type; expected one of {', '.join(SUFFIXES)}")


def _check_file(path: Path) -> str:
    if not path.exists():
        raise ContractError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise ContractError(f"{path}: not a file")
    suffix = _suffix(path)
    if path.stat().st_size == 0:
        raise ContractError(f"{path}: the file is empty; expected a header row and data rows")
    return suffix


def expand_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files as given, folders replaced by their log files (sorted, one level, hidden files and other types skipped),
    so `mixllm ingest data/landing/` picks up whatever landed there. A folder without any log file is an error."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                       and any(f.name.lower().endswith(s) for s in SUFFIXES))
        if not found:
            raise ContractError(f"{p}: folder has no log files ({', '.join(SUFFIXES)})")
        out.extend(found)
    return out


def _nulls_to_none(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype(object)
    return df.where(df.notna(), None)


def _read_table(path: Path) -> pd.DataFrame:
    """Any supported file as a frame of raw values (object dtype, None for missing)."""
    suffix = _check_file(path)
    try:
        if suffix.startswith(".csv"):
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
            return _nulls_to_none(df)  # only empty cells are NaN here
        elif suffix.startswith(".jsonl"):
            return _read_jsonl(path, gz=suffix.endswith(".gz"))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            df = pd.DataFrame({name: pd.Series(table.column(name).to_pylist(), dtype=object)
                               for name in table.column_names})
            return df  # to_pylist keeps null (None) apart from NaN (a wrong value)
    except ContractError:
        raise
    except pd.errors.EmptyDataError as e:
        raise ContractError(f"{path}: the file has no header row; expected CSV with a header") from e
    except (pd.errors.ParserError, UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError, ValueError) as e:
        raise ContractError(f"{path}: cannot be read as {suffix}: {e}") from e


def _read_jsonl(path: Path, gz: bool) -> pd.DataFrame:
    opener = gzip.open if gz else open
    rows: list[dict[str, Any]] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ContractError(f"{path}:{n}: invalid JSON ({e.msg}); one JSON object per line expected") from e
            if not isinstance(row, dict):
                raise ContractError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise ContractError(f"{path}: no JSON objects in the file")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    # object columns built by hand: JSON null stays None, a JSON NaN token stays NaN (a wrong value)
    return pd.DataFrame({k: pd.Series([r.get(k) for r in rows], dtype=object) for k in keys})


def _canonical(df: pd.DataFrame, columns: Sequence[str], kind: str, path: Path) -> pd.DataFrame:
    """The contract's columns (absent optional ones as nulls) plus, when the file has more columns, EXTRA_COLUMN:
    each row's other cells as one JSON object. Real gateway exports carry `tenant`, `user`, `metric`...: they are
    metadata worth keeping (slicing, audits, per-tenant caps later), never a reason to refuse the file."""
    from mixllm.contracts import required_columns

    missing = [c for c in required_columns(kind) if c not in df.columns]
    if missing:
        raise ContractError(f"{path}: missing required columns {missing}; a {kind} file has {list(columns)}"
                            f"{near_misses([str(c) for c in df.columns if c not in columns], columns)}")
    n = len(df)
    out = pd.DataFrame({c: (df[c].astype(object) if c in df else pd.Series([None] * n, dtype=object))
                        for c in columns}).reset_index(drop=True)
    extra = [c for c in df.columns if c not in columns]
    if extra:
        out[EXTRA_COLUMN] = _extra_json(df[extra].reset_index(drop=True))
    out.attrs[EXTRA_ATTR] = tuple(str(c) for c in extra)
    return out


def near_misses(extra: Sequence[str], columns: Sequence[str]) -> str:
    """' (did you mean ...)' for extra columns named almost like a contract column (a typo keeps the real column
    empty), or ''."""
    hints = [f"{c!r} -> {m[0]!r}" for c in extra if (m := difflib.get_close_matches(str(c).lower(), columns, 1, 0.8))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _extra_json(extra: pd.DataFrame) -> pd.Series:
    """Per row, the non-null extra cells as sorted JSON (ASCII-escaped, so any text survives any backend); None
    when the row has none. Values JSON cannot hold (NaN, timestamps, bytes, numpy scalars) become text/numbers."""
    names = [str(c) for c in extra.columns]
    out = []
    for values in extra.itertuples(index=False, name=None):
        cells = {k: _jsonable(v) for k, v in zip(names, values) if not _null(v)}
        out.append(json.dumps(cells, sort_keys=True, allow_nan=False) if cells else None)
    return pd.Series(out, dtype=object)


def _null(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    return str(v)


def is_routerbench(columns: Iterable[str]) -> bool:
    cols = set(columns)
    return all(k in cols for k in ROUTERBENCH_KEYS) and any(c.endswith(COST_SUFFIX) for c in cols)


def _list_text(cell: Any) -> str | None:
    """The text inside a python-list literal cell (elements joined by a newline); the raw cell otherwise."""
    if cell is None:
        return None
    simple = _SIMPLE_LIST.match(cell) if isinstance(cell, str) else None
    if simple:  # fast path for the common one-element literal without escapes
        return simple.group(1)
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return cell
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return cell


def routerbench_to_log(wide: pd.DataFrame) -> pd.DataFrame:
    """RouterBench wide rows -> canonical log rows, one per (sample, model); values kept raw for the contract.

    RouterBench reuses a `sample_id` for different prompts (inside arc_challenge_train, and between the train and
    test files), so a query is named by both: ``<sample_id>#<first 8 hex of sha256(prompt)>``. The same prompt
    under the same id gets the same query_id in any file; different prompts never share one, and none is lost.
    """
    models = [c.removesuffix(COST_SUFFIX) for c in wide.columns if c.endswith(COST_SUFFIX)]
    wide = _nulls_to_none(wide.reset_index(drop=True))
    prompts = pd.Series([_list_text(p) for p in wide["prompt"]], dtype=object)
    query_ids = [f"{i}#{hashlib.sha256(str(p).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
                 if i is not None else None for i, p in zip(wide["sample_id"], prompts)]
    prompt_tokens = [estimate_tokens(p) if isinstance(p, str) else None for p in prompts]
    frames = []
    for model in models:
        responses = wide.get(f"{model}{RESPONSE_SUFFIX}", pd.Series([None] * len(wide), dtype=object))
        completion = [estimate_tokens(t) if isinstance(t, str) else None for t in map(_list_text, responses)]
        frames.append(pd.DataFrame({
            "query_id": query_ids,
            "prompt": prompts,
            "model": model,
            "quality": wide[model] if model in wide else None,
            "cost_usd": wide[f"{model}{COST_SUFFIX}"],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "latency_ms": None,
            "task": wide["eval_name"],
            "ts": None,
            "router_version": None,  # full information: no policy chose these rows
            "propensity": None,
        }))
    if not frames:
        return pd.DataFrame(columns=list(LOG_COLUMNS), dtype=object)
    out = pd.concat(frames, ignore_index=True).astype(object)
    return out.where(out.notna(), None)


def read_log(path: str | Path) -> pd.DataFrame:
    """An interaction-log file as raw canonical rows (LOG_COLUMNS, plus EXTRA_COLUMN when the file has other
    columns; their names in ``attrs[EXTRA_ATTR]``), unvalidated."""
    path = Path(path)
    df = _read_table(path)
    if is_routerbench(df.columns):
        return routerbench_to_log(df)
    return _canonical(df, LOG_COLUMNS, "log", path)


def read_feedback(path: str | Path) -> pd.DataFrame:
    """A feedback file as raw canonical rows (FEEDBACK_COLUMNS, plus EXTRA_COLUMN as in `read_log`), unvalidated."""
    path = Path(path)
    return _canonical(_read_table(path), FEEDBACK_COLUMNS, "feedback", path)


def routerbench_files(data_dir: str | Path, split: str = "train") -> list[Path]:
    if split not in ("train", "test"):
        raise ContractError(f"split must be 'train' or 'test', got {split!r}")
    files = sorted(Path(data_dir).glob(f"*_{split}.csv*"))
    if not files:
        raise ContractError(f"{data_dir}: no RouterBench *_{split}.csv(.gz) files; check the data directory")
    return files


def load_routerbench(data_dir: str | Path, split: str = "train") -> pd.DataFrame:
    """Canonical typed rows of every bundled RouterBench task for one split (quality NaN where the cell is empty).

    Not validated through GX (importing it costs seconds); the bundled files pass the contract, which the data
    tests check. Rows are stamped with ROUTERBENCH_TS so the frame is identical on every call.
    """
    from mixllm.contracts import prepare, typed

    raw = pd.concat([read_log(f) for f in routerbench_files(data_dir, split)], ignore_index=True)
    return typed(prepare(raw, "log", default_ts=ROUTERBENCH_TS), "log")


def load_training_log(paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Read and validate log files; the accepted rows only (identical rows once), canonical LOG_COLUMNS."""
    from mixllm.contracts import validate_log

    paths = expand_paths(paths)
    if not paths:
        raise ContractError("no log files given")
    parts, seen = [], set()
    for p in paths:
        result = validate_log(read_log(p))
        keep = np.array([d not in seen for d in result.accepted_digests], dtype=bool)
        seen.update(result.accepted_digests)
        parts.append(result.accepted[keep] if len(keep) else result.accepted)
    return pd.concat(parts, ignore_index=True).loc[:, list(LOG_COLUMNS)]  # metadata does not train
