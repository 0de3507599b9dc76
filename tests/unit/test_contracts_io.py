"""Reading log/feedback files: formats, and bad input paths as one clear ContractError (never a traceback)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
    ("extra.csv", b"query_id,prompt,model,qualty\nq1,p,m,1\n", r"unexpected columns \['qualty'\]"),
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
