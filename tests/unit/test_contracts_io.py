"""Reading log/feedback files: formats, and bad input paths as one clear ContractError (never a traceback)."""

from __future__ import annotations

import gzip
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixllm.contracts import prepare, row_digests
from mixllm.data import read_feedback, read_log
from mixllm.exceptions import ContractError
from mixllm.schemas import FEEDBACK_COLUMNS, LOG_COLUMNS

pytestmark = pytest.mark.unit

ROWS = [
    {"query_id": "q1", "prompt": "What is 2+2?", "model": "m1", "quality": 1.0, "cost_usd": 0.001,
     "prompt_tokens": 6, "completion_tokens": 1, "latency_ms": 12.5, "task": "math", "ts": "2026-11-01T10:00:00Z"},
    {"query_id": "q2", "prompt": "Héllo, \"quoted\"\nnew line", "model": "m2", "quality": None, "cost_usd": None,
     "prompt_tokens": None, "completion_tokens": None, "latency_ms": None, "task": None, "ts": None},
]


def write_all(tmp_path: Path) -> dict[str, Path]:
    df = pd.DataFrame(ROWS, columns=list(LOG_COLUMNS))
    paths = {s: tmp_path / f"log{s}" for s in (".csv", ".csv.gz", ".jsonl", ".parquet")}
    df.to_csv(paths[".csv"], index=False)
    df.to_csv(paths[".csv.gz"], index=False, compression="gzip")
    paths[".jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ROWS), paths[".parquet"])
    return paths


def test_every_format_reads_to_the_same_canonical_rows(tmp_path: Path) -> None:
    digests = {}
    for suffix, path in write_all(tmp_path).items():
        raw = read_log(path)
        assert list(raw.columns) == list(LOG_COLUMNS) and len(raw) == 2
        assert raw.loc[1, "prompt"] == ROWS[1]["prompt"] and raw.loc[1, "quality"] is None
        digests[suffix] = row_digests(prepare(raw, "log"), "log")
    assert len({tuple(d) for d in digests.values()}) == 1, digests  # same rows, same digests, whatever the format


def test_missing_columns_are_filled_but_required_ones_are_not_optional(tmp_path: Path) -> None:
    p = tmp_path / "min.csv"
    p.write_text("query_id,prompt,model\nq1,hi,m\n")
    raw = read_log(p)
    assert list(raw.columns) == list(LOG_COLUMNS) and raw.loc[0, "quality"] is None
    p.write_text("query_id,prompt\nq1,hi\n")
    with pytest.raises(ContractError, match=r"missing required columns \['model'\]"):
        read_log(p)


@pytest.mark.parametrize("name,content,match", [
    ("nope.csv", None, "no such file"),
    ("log.txt", b"query_id\n", "unknown file type"),
    ("empty.csv", b"", "empty"),
    ("blank.csv", b"\n\n", "no header"),
    ("bad.csv.gz", b"not gzip at all", "cannot be read"),
    ("bad.csv", b"query_id,prompt,model\n\"q1,unterminated", "cannot be read"),
    ("latin1.csv", "query_id,prompt,model\nq1,caf\xe9,m\n".encode("latin-1"), "cannot be read"),
    ("bad.jsonl", b'{"query_id": "q1"}\n{oops\n', r"bad.jsonl:2: invalid JSON"),
    ("list.jsonl", b"[1, 2]\n", "expected a JSON object"),
    ("bad.parquet", b"PAR1 nonsense", "cannot be read"),
    ("typo.csv", b"query_id,prompt,Modell\nq1,p,m\n", r"missing required columns \['model'\].*\(did you "
                                                       r"mean 'Modell' -> 'model'\?\)"),
])
def test_bad_files_raise_one_clear_contract_error(tmp_path: Path, name: str, content: bytes | None,
                                                  match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ContractError, match=match) as info:
        read_log(path)
    assert str(path) in str(info.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    d = tmp_path / "dir.csv"
    d.mkdir()
    with pytest.raises(ContractError, match="not a file"):
        read_log(d)


def test_parquet_null_is_missing_but_nan_is_kept_as_a_wrong_value(tmp_path: Path) -> None:
    p = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b"], "prompt": ["p", "p"], "model": ["m", "m"],
                             "quality": pa.array([None, float("nan")], pa.float64())}), p)
    frame = prepare(read_log(p), "log")
    assert frame.loc[0, "quality"] is None and frame.loc[1, "quality"] == "nan"


def test_feedback_files(tmp_path: Path) -> None:
    p = tmp_path / "fb.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"query_id": "q1", "model": "m", "rating": 1}) + "\n")
    raw = read_feedback(p)
    assert list(raw.columns) == list(FEEDBACK_COLUMNS) and raw.loc[0, "rating"] == 1


def test_expand_paths_takes_folders_and_rejects_empty_ones(tmp_path):
    from mixllm.data import expand_paths

    (tmp_path / "b.csv").write_text("x\n1\n")
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "README.md").write_text("not a log")
    (tmp_path / ".hidden.csv").write_text("x\n1\n")
    single = tmp_path / "b.csv"
    assert expand_paths(tmp_path) == [tmp_path / "a.jsonl", tmp_path / "b.csv"]
    assert expand_paths([single]) == [single]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ContractError, match="no log files"):
        expand_paths([empty])


# ---------------------------------------------------------------------------- logs as users have them ---------
EXTRA = {"tenant": ["acme", None], "user": ["u-17", "u-18"], "metric": [0.93, float("nan")]}


def _with_extra(tmp_path: Path, suffix: str) -> Path:
    rows = [{**r, **{k: v[i] for k, v in EXTRA.items()}} for i, r in enumerate(ROWS)]
    path = tmp_path / f"extra{suffix}"
    if suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_extra_columns_are_kept_as_metadata_and_the_contract_columns_keep_their_digests(tmp_path: Path,
                                                                                          suffix: str) -> None:
    from mixllm.contracts import validate_log
    from mixllm.data import EXTRA_ATTR
    from mixllm.schemas import EXTRA_COLUMN

    raw = read_log(_with_extra(tmp_path, suffix))
    assert list(raw.columns) == [*LOG_COLUMNS, EXTRA_COLUMN] and raw.attrs[EXTRA_ATTR] == ("tenant", "user", "metric")
    first, second = (json.loads(x) for x in raw[EXTRA_COLUMN])
    assert first == {"tenant": "acme", "user": "u-17", "metric": "0.93" if suffix == ".csv" else 0.93}
    # a missing cell is left out; a NaN (JSON/Parquet) is a value, kept as text
    assert second == ({"user": "u-18"} if suffix == ".csv" else {"user": "u-18", "metric": "nan"})
    plain = read_log(write_all(tmp_path)[suffix])
    assert row_digests(prepare(raw, "log"), "log") == row_digests(prepare(plain, "log"), "log")
    result = validate_log(raw)
    assert len(result.accepted) == 2 and result.quarantined.empty
    assert result.accepted_digests == validate_log(plain).accepted_digests
    assert list(result.accepted[EXTRA_COLUMN]) == list(raw[EXTRA_COLUMN])


def test_the_contract_still_checks_every_known_column_of_a_file_with_extra_columns(tmp_path: Path) -> None:
    from mixllm.contracts import validate_log
    from mixllm.schemas import EXTRA_COLUMN

    p = tmp_path / "x.csv"
    p.write_text("query_id,prompt,model,quality,tenant\nq1,hi,m,1.5,acme\nq2,hi,m,0.5,beta\n")
    result = validate_log(read_log(p))
    assert list(result.accepted.query_id) == ["q2"] and json.loads(result.accepted[EXTRA_COLUMN][0]) == {
        "tenant": "beta"}
    assert result.quarantined.column.tolist() == ["quality"]
    assert json.loads(result.quarantined[EXTRA_COLUMN][0]) == {"tenant": "acme"}  # the whole row is quarantined
    fb = tmp_path / "fb.csv"
    fb.write_text("query_id,model,rating,user\nq1,m,1,u-1\n")
    assert json.loads(read_feedback(fb)[EXTRA_COLUMN][0]) == {"user": "u-1"}


_NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda n: n not in LOG_COLUMNS)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=20), lambda c: st.lists(c, max_size=3) | st.dictionaries(
                         st.text(max_size=5), c, max_size=3), max_leaves=6)


# validate() sees a file only through prepare(raw) (the contract columns) plus the extra column it carries along, so
# "never refused, digests unchanged" is: read_log accepts the file, and prepare() and the row digests are identical
# to those of the same rows without the extra columns (the GX run itself is exercised by the tests above).
T_FIXED = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _same_contract_rows(raw: pd.DataFrame, suffix: str) -> None:
    plain = read_log(write_all_once()[suffix])
    got, want = prepare(raw, "log", default_ts=T_FIXED), prepare(plain, "log", default_ts=T_FIXED)
    pd.testing.assert_frame_equal(got, want)
    assert row_digests(got, "log") == row_digests(want, "log")


@given(extra=st.dictionaries(_NAMES, st.tuples(_JSON, _JSON), min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_any_extra_columns_in_jsonl_never_refuse_good_rows_nor_change_digests(extra: dict) -> None:
    from mixllm.schemas import EXTRA_COLUMN

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.jsonl"
        path.write_text("".join(json.dumps({**r, **{k: v[i] for k, v in extra.items()}}) + "\n"
                                for i, r in enumerate(ROWS)), encoding="utf-8")
        raw = read_log(path)
    _same_contract_rows(raw, ".jsonl")
    for i, cell in enumerate(raw[EXTRA_COLUMN]):
        kept = {k: v[i] for k, v in extra.items() if v[i] is not None}
        assert (json.loads(cell) if cell is not None else {}) == kept


@given(extra=st.dictionaries(_NAMES, st.tuples(*[st.text(st.characters(blacklist_categories=("Cs", "Cc")),
                                                         max_size=15)] * 2), min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_any_extra_columns_in_csv_never_refuse_good_rows_nor_change_digests(extra: dict) -> None:
    from mixllm.schemas import EXTRA_COLUMN

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.csv"
        pd.DataFrame([{**r, **{k: v[i] for k, v in extra.items()}} for i, r in enumerate(ROWS)]).to_csv(
            path, index=False)
        raw = read_log(path)
    _same_contract_rows(raw, ".csv")
    for i, cell in enumerate(raw[EXTRA_COLUMN]):
        kept = {k: v[i] for k, v in extra.items() if v[i] != ""}  # an empty CSV cell is a missing value
        assert (json.loads(cell) if cell is not None else {}) == kept


_PLAIN_DIR: list[dict[str, Path]] = []


def write_all_once() -> dict[str, Path]:
    """The plain files of ROWS, written once per session (hypothesis examples share them)."""
    if not _PLAIN_DIR:
        _PLAIN_DIR.append(write_all(Path(tempfile.mkdtemp(prefix="mixllm-plain-"))))
    return _PLAIN_DIR[0]
