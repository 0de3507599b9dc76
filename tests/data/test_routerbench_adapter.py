"""The RouterBench adapter on the bundled sample, including the defects kept on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from mixllm.catalogue import estimate_tokens
from mixllm.contracts import validate_log
from mixllm.data import is_routerbench, load_routerbench, read_log, routerbench_files

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def arc_train(routerbench_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = routerbench_dir / "arc_challenge_train.csv.gz"
    return pd.read_csv(path), read_log(path)


def model_columns(wide: pd.DataFrame) -> list[str]:
    return [c.removesuffix("|total_cost") for c in wide.columns if c.endswith("|total_cost")]


def test_wide_csv_is_detected_and_unrolled(arc_train) -> None:
    wide, log = arc_train
    models = model_columns(wide)
    assert is_routerbench(wide.columns) and len(models) == 11
    assert len(log) == len(wide) * len(models)
    assert not log.duplicated(["query_id", "model"]).any()
    assert set(log.task) == {"arc-challenge"} and log.ts.isna().all() and log.latency_ms.isna().all()


def test_empty_quality_cells_become_unknown_quality_and_stay(routerbench_dir: Path) -> None:
    rows_with_gap, cells, nulls, accepted_nulls = 0, 0, 0, 0
    for split in ("train", "test"):
        path = routerbench_dir / f"arc_challenge_{split}.csv.gz"
        wide = pd.read_csv(path)
        gaps = wide[model_columns(wide)].isna()
        rows_with_gap += int(gaps.any(axis=1).sum())
        cells += int(gaps.sum().sum())
        log = read_log(path)
        nulls += int(log.quality.isna().sum())
        result = validate_log(log)
        assert result.quarantined.empty, result.quarantined.reason.head().tolist()
        accepted_nulls += int(result.accepted.quality.isna().sum())
    assert rows_with_gap == 28  # the documented defect
    assert nulls == cells == accepted_nulls > 0


def test_repeated_sample_ids_with_different_prompts_are_distinct_queries(arc_train) -> None:
    wide, log = arc_train
    repeated = wide[wide.sample_id.duplicated(keep=False)]
    assert repeated.sample_id.nunique() >= 1
    assert (repeated.groupby("sample_id").prompt.nunique() == 2).all()
    per_query = log.drop_duplicates("query_id")
    assert len(per_query) == len(wide)  # no query lost
    for sid in repeated.sample_id.unique():
        ids = per_query[per_query.query_id.str.startswith(f"{sid}#")]
        assert len(ids) == 2 and ids.prompt.nunique() == 2
    assert (per_query.query_id.str.split("#").str[0] == per_query.query_id.str[:-9]).all()


def test_sample_ids_reused_across_splits_do_not_merge_queries(routerbench_dir: Path) -> None:
    wide = {s: pd.read_csv(routerbench_dir / f"arc_challenge_{s}.csv.gz") for s in ("train", "test")}
    shared = set(wide["train"].sample_id) & set(wide["test"].sample_id)
    assert shared  # RouterBench's split reuses some ids for other questions
    both = pd.concat([read_log(routerbench_dir / f"arc_challenge_{s}.csv.gz") for s in ("train", "test")])
    assert (both.groupby("query_id").prompt.nunique() == 1).all()
    assert both.query_id.nunique() == len(wide["train"]) + len(wide["test"])


def test_cells_map_to_canonical_values(arc_train) -> None:
    wide, log = arc_train
    w = wide.iloc[5]
    model = "gpt-4-1106-preview"
    r = log[(log.query_id.str.startswith(f"{w.sample_id}#")) & (log.model == model)].iloc[0]
    prompt = "\n".join(ast.literal_eval(w.prompt))
    assert r.prompt == prompt and int(r.prompt_tokens) == estimate_tokens(prompt)
    response = "\n".join(ast.literal_eval(w[f"{model}|model_response"]))
    assert int(r.completion_tokens) == estimate_tokens(response)
    assert float(r.cost_usd) == pytest.approx(w[f"{model}|total_cost"])
    assert float(r.quality) == w[model]


def test_load_routerbench_all_tasks(routerbench_dir: Path) -> None:
    train = load_routerbench(routerbench_dir, "train")
    test = load_routerbench(routerbench_dir, "test")
    wide_rows = {s: sum(len(pd.read_csv(f)) for f in routerbench_files(routerbench_dir, s)) for s in ("train", "test")}
    assert len(train) == wide_rows["train"] * 11 and len(test) == wide_rows["test"] * 11
    assert train.query_id.nunique() == wide_rows["train"]
    assert set(train.task) == {"arc-challenge", "mbpp", "winogrande"}
    assert train.quality.dtype == float and train.cost_usd.notna().all() and (train.cost_usd >= 0).all()
    assert str(train.prompt_tokens.dtype) == "Int64" and (train.prompt_tokens > 0).all()
    assert not set(train.query_id) & set(test.query_id)
    pd.testing.assert_frame_equal(train, load_routerbench(routerbench_dir, "train"))  # reproducible
    assert validate_log(train).quarantined.empty  # typed frames pass the same suite


def test_bad_split_or_dir(tmp_path: Path, routerbench_dir: Path) -> None:
    from mixllm.exceptions import ContractError

    with pytest.raises(ContractError, match="split"):
        load_routerbench(routerbench_dir, "val")
    with pytest.raises(ContractError, match="no RouterBench"):
        load_routerbench(tmp_path, "train")


def test_load_training_log_keeps_accepted_rows_once(routerbench_dir: Path) -> None:
    from mixllm.data import load_training_log
    from mixllm.schemas import LOG_COLUMNS

    defects = Path(__file__).resolve().parent / "fixtures" / "log_with_defects.csv"
    mbpp = routerbench_dir / "mbpp_test.csv.gz"
    log = load_training_log([defects, mbpp, mbpp])  # the second copy adds nothing
    assert list(log.columns) == list(LOG_COLUMNS)
    assert len(log) == 4 + len(pd.read_csv(mbpp)) * 11
    assert log.quality.dropna().between(0, 1).all() and not log.duplicated(["query_id", "model"]).any()
