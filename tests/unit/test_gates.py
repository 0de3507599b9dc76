"""Evaluation gates: pass, and fail on each criterion with a reason that names it (issue 5, item 3)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixllm.exceptions import ConfigError
from mixllm.gates import GateConfig, ProductionComparison, check_gates, load_gates

pytestmark = pytest.mark.unit

CFG = GateConfig.model_validate({
    "aiq": {"metric": "aiq", "tolerance": 0.01},
    "budget_quality": {"metric": "default_wtp/quality", "tolerance": 0.02},
    "task_slices": {"prefix": "task/", "metric": "aiq", "tolerance": 0.05},
    "floors": {"aiq": 0.5, "default_wtp/quality": 0.4},
})
CHAMP = {"aiq": 0.80, "default_wtp/quality": 0.70, "task/arc/aiq": 0.9, "task/mbpp/aiq": 0.6}


def summary(**changes: float) -> dict[str, float]:
    out = dict(CHAMP)
    out.update({k.replace("__", "/"): v for k, v in changes.items()})
    return out


def test_equal_candidate_passes() -> None:
    v = check_gates(summary(), CHAMP, CFG)
    assert v.passed and not v.failures
    assert "all" in v.reason and "passed" in v.reason
    assert {c.name for c in v.checks} >= {"aiq", "budget quality", "slice arc", "slice mbpp", "floor aiq"}


def test_within_tolerance_passes_and_beyond_fails_on_aiq() -> None:
    assert check_gates(summary(aiq=0.795), CHAMP, CFG).passed
    v = check_gates(summary(aiq=0.78), CHAMP, CFG)
    assert not v.passed
    assert [c.name for c in v.failures] == ["aiq"]
    assert "aiq 0.7800 vs champion 0.8000" in v.reason


def test_fails_on_budget_quality() -> None:
    v = check_gates(summary(default_wtp__quality=0.65), CHAMP, CFG)
    assert [c.name for c in v.failures] == ["budget quality"]
    assert "default_wtp/quality" in v.reason


def test_fails_on_one_task_slice_only() -> None:
    v = check_gates(summary(task__mbpp__aiq=0.50), CHAMP, CFG)
    assert [c.name for c in v.failures] == ["slice mbpp"]
    assert "task/mbpp/aiq 0.5000 vs champion 0.6000" in v.reason


def test_slices_missing_from_champion_are_not_compared() -> None:
    v = check_gates(summary(task__new__aiq=0.1), CHAMP, CFG)
    assert v.passed and "slice new" not in {c.name for c in v.checks}


def test_floor_fails_even_without_champion() -> None:
    v = check_gates({"aiq": 0.45, "default_wtp/quality": 0.9}, None, CFG)
    assert not v.passed
    assert [c.name for c in v.failures] == ["floor aiq"]
    assert "0.4500 < floor 0.5" in v.reason


def test_first_version_passes_on_floors() -> None:
    v = check_gates(summary(), None, CFG)
    assert v.passed and "no champion yet" in v.reason
    assert all(c.name.startswith("floor") for c in v.checks)


@pytest.mark.parametrize("value", [None, math.nan])
def test_missing_or_nan_metric_fails_instead_of_passing(value: float | None) -> None:
    cand = summary()
    if value is None:
        del cand["default_wtp/quality"]
    else:
        cand["default_wtp/quality"] = value
    v = check_gates(cand, CHAMP, CFG)
    assert not v.passed
    assert "default_wtp/quality missing from the candidate" in v.reason


def test_several_failures_are_all_reported() -> None:
    v = check_gates(summary(aiq=0.3, task__arc__aiq=0.1), CHAMP, CFG)
    assert {c.name for c in v.failures} == {"aiq", "slice arc", "floor aiq"}


@given(delta=st.floats(min_value=-0.5, max_value=0.5, allow_nan=False))
def test_aiq_verdict_is_exactly_the_tolerance_rule(delta: float) -> None:
    cand = summary(aiq=0.8 + delta)
    expected = cand["aiq"] >= 0.8 - 0.01
    assert ({c.name: c.passed for c in check_gates(cand, CHAMP, CFG).checks}["aiq"]) == expected


def test_packaged_defaults_load_and_name_the_evaluation_metrics() -> None:
    cfg = load_gates()
    assert cfg.aiq.metric == "aiq" and cfg.aiq.tolerance >= 0
    assert cfg.floors, "the packaged gates must define absolute floors"


def test_gate_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "gates.yaml"
    good.write_text("aiq: {metric: aiq, tolerance: 0.2}\nfloors: {aiq: 0.1}\n")
    assert load_gates(good).aiq.tolerance == 0.2
    bad = tmp_path / "bad.yaml"
    bad.write_text("aiq: {metric: aiq, tolerance: -1}\n")
    with pytest.raises(ConfigError, match="invalid gate file"):
        load_gates(bad)
    with pytest.raises(ConfigError, match="cannot read gate file"):
        load_gates(tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("aiq_tolerance: 0.1\n")
    with pytest.raises(ConfigError):
        load_gates(typo)


def test_must_beat_named_baselines() -> None:
    cfg = CFG.model_copy(update={"beat_baselines": ("random",)})
    assert check_gates(summary(**{"baseline__random__aiq": 0.7}), CHAMP, cfg).passed
    v = check_gates(summary(**{"baseline__random__aiq": 0.85}), None, cfg)
    assert [c.name for c in v.failures] == ["beats random"]
    assert "aiq 0.8000 vs baseline random 0.8500" in v.reason
    v = check_gates(summary(), None, cfg)  # baseline not evaluated: fail, do not pass silently
    assert "baseline/random/aiq missing" in v.reason


def _ope(diff: float, low: float, high: float, n: float = 500, ess: tuple[float, float] = (120.0, 90.0)) -> dict:
    return {"ope/n_labelled": n, "ope/candidate/dr": 0.70 + diff, "ope/champion/dr": 0.70, "ope/diff/dr": diff,
            "ope/diff/dr_low": low, "ope/diff/dr_high": high, "ope/candidate/ess": ess[0], "ope/champion/ess": ess[1]}


def _production(v) -> "object":
    return next(c for c in v.checks if c.name == "production traffic")


def test_production_traffic_gate_applies_only_with_enough_evidence_and_records_the_numbers() -> None:
    cfg = CFG.model_copy(update={"production": ProductionComparison(min_labelled=200, min_ess=30, tolerance=0.02)})
    ok = _production(check_gates({**summary(), **_ope(-0.01, -0.05, 0.03)}, CHAMP, cfg))
    assert ok.passed and "difference -0.0100 [-0.0500, +0.0300]" in ok.detail and "ESS 120.0/90.0" in ok.detail
    assert "candidate 0.6900 vs champion 0.7000" in ok.detail and "500 logged decisions" in ok.detail
    worse = check_gates({**summary(), **_ope(-0.10, -0.15, -0.05)}, CHAMP, cfg)
    assert not worse.passed and [c.name for c in worse.failures] == ["production traffic"]
    assert "worse than champion beyond tolerance" in worse.reason
    # the interval reaches -tolerance: not confidently worse under rule "ci", worse under rule "point"
    borderline = {**summary(), **_ope(-0.05, -0.09, -0.019)}
    assert _production(check_gates(borderline, CHAMP, cfg)).passed
    point = cfg.model_copy(update={"production": ProductionComparison(rule="point", min_ess=30)})
    assert not _production(check_gates(borderline, CHAMP, point)).passed
    for cand, why in (({**summary(), **_ope(-0.5, -0.6, -0.4, n=199)}, "199 labelled logged decisions"),
                      ({**summary(), **_ope(-0.5, -0.6, -0.4, ess=(12.0, 90.0))}, "effective sample size 12.0"),
                      (summary(), "did not run")):
        check = _production(check_gates(cand, CHAMP, cfg))
        assert check.passed and check.detail.startswith("not applied") and why in check.detail
    assert "production traffic" not in {c.name for c in check_gates(summary(), None, cfg).checks}


def test_packaged_production_gate_defaults() -> None:
    prod = load_gates().production
    assert prod.estimator == "dr" and prod.min_labelled >= 1 and prod.rule in ("ci", "point")
