"""The interaction-log and feedback contracts, run through the real GX suites in data_contracts/."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mixllm.contracts as contracts
from mixllm.contracts import prepare, required_columns, row_digests, validate_feedback, validate_log
from mixllm.exceptions import ContractError
from mixllm.schemas import FEEDBACK_COLUMNS, LOG_COLUMNS

pytestmark = pytest.mark.unit


def row(i: int = 0, **over: object) -> dict[str, object]:
    base: dict[str, object] = {"query_id": f"q{i}", "prompt": f"prompt {i}?", "model": "claude-v2",
                               "quality": "1", "cost_usd": "0.002", "prompt_tokens": "4",
                               "completion_tokens": "100", "latency_ms": "1200.5", "task": "code", "ts": None,
                               "router_version": None, "propensity": None}
    base.update(over)
    return base


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(LOG_COLUMNS), dtype=object)


# (column, bad raw value) -> the row must be quarantined naming that column.
DEFECTS = [
    ("query_id", ""), ("query_id", "   "), ("query_id", None), ("query_id", 123),
    ("prompt", ""), ("prompt", None), ("prompt", 42), ("prompt", "x" * 32_001),
    ("model", ""), ("model", None),
    ("quality", 1.5), ("quality", "1.5"), ("quality", -0.1), ("quality", "abc"), ("quality", "NaN"),
    ("quality", math.nan), ("quality", True), ("quality", "inf"),
    ("cost_usd", -0.5), ("cost_usd", "-0.5"), ("cost_usd", "free"), ("cost_usd", math.inf),
    ("prompt_tokens", -3.5), ("prompt_tokens", "-3"), ("prompt_tokens", 3.5), ("prompt_tokens", "x"),
    ("completion_tokens", "1e3x"), ("latency_ms", -1), ("task", ""), ("task", 7), ("ts", "not a time"),
    ("router_version", ""), ("router_version", 3), ("propensity", 0), ("propensity", "0.0"), ("propensity", 1.5),
    ("propensity", -0.2), ("propensity", "high"), ("propensity", math.nan),
]


def test_each_defect_is_quarantined_with_its_column() -> None:
    """One table, one good row between every two defective ones (a GX run costs ~0.5 s: one run for all)."""
    rows, expected = [], {}
    for i, (column, value) in enumerate(DEFECTS):
        rows.append(row(2 * i))
        rows.append(row(2 * i + 1, **{column: value}))
        expected[2 * i + 1] = column
    result = validate_log(frame(rows))
    assert list(result.accepted.query_id) == [f"q{2 * i}" for i in range(len(DEFECTS))]
    got = {int(q["row"]): q for _, q in result.quarantined.iterrows()}
    assert set(got) == set(expected)
    wrong = {DEFECTS[(r - 1) // 2]: got[r]["reason"] for r, col in expected.items()
             if col not in got[r]["column"].split(",") or col not in got[r]["reason"]}
    assert not wrong, wrong
    assert all(e.startswith("expect_") for e in result.quarantined.expectation)


def test_good_rows_come_back_typed() -> None:
    rows = [row(0, quality=None, ts="2026-11-01T10:00:00+02:00"), row(1, quality=0.25, prompt_tokens=7.0),
            row(2, prompt="Héllo wörld ✓ 你好 🙂", task=None, cost_usd=None, latency_ms=None)]
    result = validate_log(frame(rows))
    acc = result.accepted
    assert len(acc) == 3 and result.quarantined.empty
    assert list(acc.columns) == list(LOG_COLUMNS)
    assert math.isnan(acc.quality[0]) and acc.quality[1] == 0.25 and acc.quality[2] == 1.0
    assert acc.prompt_tokens.dtype == "Int64" and list(acc.prompt_tokens) == [4, 7, 4]
    assert str(acc.ts.dt.tz) == "UTC" and acc.ts[0] == pd.Timestamp("2026-11-01T08:00:00Z")
    assert acc.prompt[2] == "Héllo wörld ✓ 你好 🙂" and acc.task[2] is None


def test_identical_rows_are_duplicates_but_conflicting_pairs_are_quarantined() -> None:
    same = validate_log(frame([row(0), row(0), row(1)]))
    assert same.duplicates == 1 and len(same.accepted) == 2 and same.quarantined.empty
    # "1" and "1.0" are the same content: numbers are compared by value
    assert validate_log(frame([row(0), row(0, quality="1.0", prompt_tokens=4)])).duplicates == 1
    clash = validate_log(frame([row(0, quality="1"), row(0, quality="0"), row(1)]))
    assert list(clash.accepted.query_id) == ["q1"]
    assert sorted(clash.quarantined["row"]) == [0, 1]
    assert set(clash.quarantined.expectation) == {"expect_compound_columns_to_be_unique"}


def test_prompt_bound_is_the_settings_value(monkeypatch: pytest.MonkeyPatch) -> None:
    long = frame([row(0, prompt="y" * 1000)])
    assert len(validate_log(long).accepted) == 1
    assert len(validate_log(long, max_prompt_chars=999).quarantined) == 1
    monkeypatch.setenv("MIXLLM_MAX_PROMPT_CHARS", "500")
    assert "expect_column_value_lengths_to_be_between" in validate_log(long).quarantined.expectation[0]


def test_digest_ignores_a_defaulted_ts_but_not_a_given_one() -> None:
    a = row_digests(prepare(frame([row(0)]), "log"), "log")
    b = row_digests(prepare(frame([row(0)]), "log"), "log")  # another "ingest time"
    c = row_digests(prepare(frame([row(0, ts="2026-01-01T00:00:00Z")]), "log"), "log")
    assert a == b and a != c


def test_policy_columns_are_optional_and_leave_old_digests_alone() -> None:
    """router_version/propensity (contract v2) are nullable; a row without them has its version-1 digest, so the
    snapshot digests of stores and files landed before v2 do not change. Pinned: computed with contract v1."""
    old = {"query_id": "q1", "prompt": "What is 2+2?", "model": "m", "quality": 1.0, "cost_usd": 0.001,
           "prompt_tokens": 6, "completion_tokens": None, "latency_ms": None, "task": "math",
           "ts": "2026-11-01T00:00:00Z"}
    v1 = "ab61b2016ae2d7d511dcf87e663b2bbdc709a41044619c29367393b62e7cd997"
    assert contracts.record_digest(old, "log") == v1
    assert contracts.record_digest({**old, "router_version": None, "propensity": None}, "log") == v1
    chosen = contracts.record_digest({**old, "router_version": "3", "propensity": 0.25}, "log")
    assert chosen != v1 and chosen != contracts.record_digest({**old, "router_version": "3", "propensity": 0.5},
                                                              "log")
    # a value moved between the two optional columns is another row, not the same one
    assert (contracts.record_digest({**old, "router_version": "0.5"}, "log")
            != contracts.record_digest({**old, "propensity": "0.5"}, "log"))
    legacy = pd.DataFrame([old]).drop(columns=[], errors="ignore")  # a frame without the columns at all
    assert row_digests(prepare(legacy, "log"), "log") == [v1]
    result = validate_log(frame([row(0, router_version="v7", propensity="0.125"), row(1, propensity=1)]))
    assert result.quarantined.empty
    assert list(result.accepted.propensity) == [0.125, 1.0] and result.accepted.router_version[0] == "v7"


def test_empty_input_validates_to_nothing() -> None:
    result = validate_log(frame([]))
    assert result.accepted.empty and result.quarantined.empty and result.duplicates == 0


def test_feedback_contract() -> None:
    fb = pd.DataFrame([
        {"query_id": "q1", "model": "m", "rating": "1", "ts": None, "source": None},
        {"query_id": "q2", "model": "m", "rating": 0.0, "ts": "2026-11-01T00:00:00Z", "source": "ui"},
        {"query_id": "q3", "model": "m", "rating": "up", "ts": None, "source": None},
        {"query_id": "q4", "model": "m", "rating": 2, "ts": None, "source": None},
        {"query_id": "q5", "model": "m", "rating": None, "ts": None, "source": None},
    ], columns=list(FEEDBACK_COLUMNS), dtype=object)
    result = validate_feedback(fb)
    assert list(result.accepted.query_id) == ["q1", "q2"]
    assert list(result.accepted.source) == ["file", "ui"]
    assert sorted(result.quarantined["row"]) == [2, 3, 4]
    assert set(result.quarantined.column) == {"rating"}


def test_required_columns_are_read_from_the_suites() -> None:
    assert set(required_columns("log")) == {"query_id", "prompt", "model"}
    assert set(required_columns("feedback")) == {"query_id", "model", "rating"}


def test_rules_come_from_the_suite_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tighten the quality range in a copy of the suite: validation follows the file, not Python."""
    suite = json.loads((contracts.CONTRACTS_DIR / "interaction_log.json").read_text())
    for exp in suite["expectations"]:
        if exp["kwargs"].get("column") == "quality__number":
            exp["kwargs"]["max_value"] = 0.5
    shutil.copy(contracts.CONTRACTS_DIR / "feedback.json", tmp_path / "feedback.json")
    (tmp_path / "interaction_log.json").write_text(json.dumps(suite))
    monkeypatch.setattr(contracts, "CONTRACTS_DIR", tmp_path)
    contracts.suite_dict.cache_clear()
    contracts._gx.cache_clear()
    try:
        result = validate_log(frame([row(0, quality="0.4"), row(1, quality="0.8")]))
        assert list(result.accepted.query_id) == ["q0"]
        (tmp_path / "interaction_log.json").write_text("{not json")
        contracts.suite_dict.cache_clear()
        with pytest.raises(ContractError, match="interaction_log.json"):
            validate_log(frame([row(0)]))
    finally:
        contracts.suite_dict.cache_clear()
        contracts._gx.cache_clear()


# ------------------------------------------------------------------ generated cases
good_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
number_repr = st.sampled_from(["str", "float"])


@st.composite
def good_rows(draw: st.DrawFn, i: int) -> dict[str, object]:
    def num(x: float) -> object:
        return repr(x) if draw(number_repr) == "str" else x

    q = draw(st.none() | st.floats(0, 1))
    return row(i, prompt=draw(good_text), model=draw(st.sampled_from(["a", "b/c", "模型"])),
               quality=None if q is None else num(q),
               cost_usd=draw(st.none() | st.floats(0, 10).map(num)),
               prompt_tokens=draw(st.none() | st.integers(0, 10**6).map(lambda n: str(n) if n % 2 else n)),
               task=draw(st.none() | good_text))


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[dict[str, object]], dict[int, str]]:
    n = draw(st.integers(1, 16))
    rows, bad = [], {}
    for i in range(n):
        r = draw(good_rows(i))
        if draw(st.booleans()):
            column, value = draw(st.sampled_from(DEFECTS))
            r[column] = value
            bad[i] = column
        rows.append(r)
    return rows, bad


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tables())
def test_generated_rows_split_exactly_into_accepted_and_quarantined(case) -> None:
    rows, bad = case
    result = validate_log(frame(rows))
    assert len(result.accepted) + len(result.quarantined) == len(rows)
    assert {int(r) for r in result.quarantined["row"]} == set(bad)
    for _, q in result.quarantined.iterrows():
        assert bad[int(q["row"])] in q["column"].split(","), q["reason"]
    good = [r for i, r in enumerate(rows) if i not in bad]
    assert list(result.accepted.query_id) == [r["query_id"] for r in good]
    for r, (_, a) in zip(good, result.accepted.iterrows()):
        assert a.prompt == r["prompt"]
        assert (math.isnan(a.quality) if r["quality"] is None else a.quality == float(r["quality"]))


def test_the_same_rows_are_validated_once_and_different_ones_again() -> None:
    """The nightly validates a landing file in its contract check and again in the store's ingest: the second call
    on identical rows gets the first result (a copy), a frame differing only in a cell's type is validated anew.
    Cost: three validations of 2 rows (< 1 s)."""
    raw = frame([row(0), row(1, quality="2")])
    first = validate_log(raw)
    first.accepted.loc[:, "quality"] = -1.0  # a caller's edit must not reach the kept copy
    second = validate_log(raw.copy())
    assert list(second.accepted["quality"]) == [1.0] and len(second.quarantined) == 1
    assert second.accepted_digests == first.accepted_digests
    assert len(validate_log(frame([row(0, prompt="42")])).accepted) == 1
    assert len(validate_log(frame([row(0, prompt=42)])).quarantined) == 1  # pandas hashes 42 and "42" alike
