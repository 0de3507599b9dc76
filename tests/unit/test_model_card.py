"""The version description: headline figures beside the champion's, a per-task table cut to MLflow's limit."""

from __future__ import annotations

import pytest

from mixllm.model_card import MAX_DESCRIPTION, PER_TASK_CSV, per_task_table, run_links, version_description

pytestmark = pytest.mark.unit

SUMMARY = {"aiq": 0.91234, "quality_at_25pct_cost": 0.8, "n_queries": 45.0, "task/mbpp/aiq": 0.5,
           "task/mbpp/quality_at_25pct_cost": 0.25, "task/arc/aiq": float("nan"), "task/arc/max_quality": 1.0,
           "baseline/random/aiq": 0.7}


def test_per_task_table_reads_task_figures_only() -> None:
    table = per_task_table(SUMMARY)
    assert list(table.index) == ["arc", "mbpp"]
    assert table.loc["mbpp", "aiq"] == 0.5 and table.loc["mbpp", "quality_at_25pct_cost"] == 0.25
    assert table["cost_for_97pct_quality"].isna().all()


def test_description_compares_with_the_champion_and_links_the_run() -> None:
    metrics = {**SUMMARY, "champion/aiq": 0.9}
    links = run_links("3", "abc123")
    text = version_description(metrics, {"gate_verdict": "failed", "gate_reason": "aiq fell",
                                         "compared_with_champion": "2"}, per_task_table(SUMMARY), links)
    assert text.startswith("**Gate: failed**: aiq fell\n\nCompared with champion version 2.")
    assert "| AIQ (area under the quality-cost frontier) | 0.9123 | 0.9000 |" in text
    assert "| quality at 25% of the reference's cost | 80.0% | - |" in text
    assert "| held-out test queries | 45 | - |" in text
    assert f"(#/experiments/3/runs/abc123/artifacts/{PER_TASK_CSV})" in text
    assert "| mbpp | 0.5000 | 25.0% | - |" in text and "| arc | - | - | - |" in text


def test_a_long_task_table_is_cut_to_mlflows_limit_with_a_link_to_the_whole() -> None:
    summary = {f"task/task-{i:03d}/aiq": 0.5 + i / 1000 for i in range(300)}
    text = version_description(summary, {}, per_task_table(summary), run_links("1", "r"))
    assert len(text) <= MAX_DESCRIPTION
    assert text.startswith("**Gate: not gated**")
    assert text.rstrip().endswith(f"full table: [{PER_TASK_CSV}](#/experiments/1/runs/r/artifacts/{PER_TASK_CSV}) |")
    assert "| task-000 | 0.5000 |" in text
