"""Incremental snapshots (mixllm.snapshots): each night reads only the rows landed since the previous snapshot, and
gets exactly what a full read gets (rows, order, dtypes, digest); a store that changed under the cache (re-created,
a row deleted) is read in full again. Real SQLite store, real contract checks, rows of the packaged sample."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from mixllm.config import get_settings
from mixllm.pipeline import SNAPSHOT_READ_ATTR, PipelineConfig, sample_data, snapshot
from mixllm.snapshots import cache_folder, incremental_snapshot
from mixllm.store import INTERACTIONS, Store

pytestmark = pytest.mark.integration


def _slice(name: str, start: int, stop: int, dst: Path) -> Path:
    """Rows [start, stop) of a packaged sample file (wide RouterBench format: one row = one query x 11 LLMs)."""
    wide = pd.read_csv(sample_data() / name).iloc[start:stop]
    with gzip.open(dst, "wt") as fh:
        wide.to_csv(fh, index=False)
    return dst


def _same_as_full(store: Store, folder: Path) -> dict:
    rows, digest, read = incremental_snapshot(store, folder)
    full, full_digest = store.snapshot()
    pd.testing.assert_frame_equal(rows, full)
    assert digest == full_digest
    return read.__dict__


def test_each_night_reads_only_new_rows_and_equals_a_full_read(tmp_path: Path) -> None:
    store = Store(get_settings().store_url)
    folder = cache_folder(tmp_path, store.url)
    store.ingest(_slice("mbpp_train.csv.gz", 0, 6, tmp_path / "a_train.csv.gz"))
    first = _same_as_full(store, folder)
    assert first["full"] and first["reused"] == 0 and first["read"] == 66 and "no previous" in first["reason"]

    store.ingest(_slice("winogrande_train.csv.gz", 0, 4, tmp_path / "b_train.csv.gz"))
    second = _same_as_full(store, folder)
    assert (second["full"], second["reused"], second["read"]) == (False, 66, 44)

    assert _same_as_full(store, folder)["read"] == 0  # nothing landed: nothing read
    row = store.logs().iloc[0].to_dict() | {"query_id": "served-1", "router_version": "v1", "propensity": 0.5}
    assert store.append_logs([{k: v for k, v in row.items() if pd.notna(v)}]) == 1  # the service's path
    third = _same_as_full(store, folder)
    assert (third["reused"], third["read"]) == (110, 1)


def test_a_store_that_changed_under_the_cache_is_read_in_full(tmp_path: Path) -> None:
    store = Store(get_settings().store_url)
    folder = cache_folder(tmp_path, store.url)
    store.ingest(_slice("mbpp_train.csv.gz", 0, 5, tmp_path / "a_train.csv.gz"))
    _same_as_full(store, folder)
    with store.engine.begin() as conn:  # a row removed below the mark (or a late commit with a smaller id)
        conn.execute(sa.delete(INTERACTIONS).where(INTERACTIONS.c.id == 3))
    after_delete = _same_as_full(store, folder)
    assert after_delete["full"] and "rows up to id" in after_delete["reason"]

    store.dispose()
    Path(sa.make_url(store.url).database).unlink()  # the store re-created at the same URL, other rows
    store = Store(store.url)
    store.ingest(_slice("winogrande_train.csv.gz", 0, 7, tmp_path / "b_train.csv.gz"))
    recreated = _same_as_full(store, folder)
    assert recreated["full"] and "not the previous snapshot's" in recreated["reason"]


def test_pipeline_snapshot_is_the_same_with_or_without_the_cache(tmp_path: Path) -> None:
    settings = get_settings()
    Store(settings.store_url).ingest(_slice("mbpp_train.csv.gz", 0, 8, tmp_path / "a_train.csv.gz"))
    full_rows, full_digest = snapshot(settings, PipelineConfig(incremental_snapshot=False))
    for expect_full in (True, False):  # first night: builds the cache; second: reuses all of it
        rows, digest = snapshot(settings, PipelineConfig())
        assert digest == full_digest
        pd.testing.assert_frame_equal(rows, full_rows)
        assert rows.attrs[SNAPSHOT_READ_ATTR]["full"] is expect_full
    sub = PipelineConfig(max_train_queries_per_task=3)
    assert snapshot(settings, sub)[1] == snapshot(settings, sub.model_copy(update={"incremental_snapshot": False}))[1]


def test_each_night_writes_only_its_new_rows_as_a_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import mixllm.snapshots as S

    monkeypatch.setattr(S, "MAX_PARTS", 2)
    store = Store(get_settings().store_url)
    folder = cache_folder(tmp_path, store.url)
    parts = []
    for i, (name, rows) in enumerate([("mbpp_train.csv.gz", 3), ("winogrande_train.csv.gz", 2),
                                      ("mbpp_train.csv.gz", 5)]):
        store.ingest(_slice(name, 3 * i, 3 * i + rows, tmp_path / f"{i}_train.csv.gz"))
        _same_as_full(store, folder)
        state = json.loads((folder / "state.json").read_text())
        parts.append((state["parts"], [len(pd.read_parquet(folder / p)) for p in state["parts"]]))
        assert sorted(p.name for p in folder.glob("rows*")) == sorted(state["parts"])  # no stray file
    assert parts[0] == (["rows-000001.parquet"], [33])  # first night: every row
    assert parts[1] == (["rows-000001.parquet", "rows-000002.parquet"], [33, 22])  # only the new rows
    assert parts[2] == (["rows-000003.parquet"], [110])  # merged past MAX_PARTS, under a new name
