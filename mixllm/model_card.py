"""What a person reads on a registered version's page: the gate verdict, the headline figures, the per-task table
and links to the frontier plot, as the version's Markdown description.

Why a description and not only tags: the MLflow UI shows tags as a flat key/value list, truncated, while the
description is rendered Markdown at the top of the version page. The figures come from the same metrics the run
logged, so the page and the run never disagree. MLflow stores at most 5,000 characters; the per-task table is cut
before the verdict and the headline figures are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import quote

import pandas as pd

MAX_DESCRIPTION = 5000  # MLflow's model_versions.description column
FRONTIER_PNG = "evaluation/frontier.png"
PER_TASK_CSV = "evaluation/per_task.csv"
PER_TASK_COLUMNS = ("aiq", "quality_at_25pct_cost", "cost_for_97pct_quality")
# (metric key, label, format): relative figures are shares of the reference (dearest) model's quality or cost
HEADLINES = (("aiq", "AIQ (area under the quality-cost frontier)", "num"),
             ("quality_at_25pct_cost", "quality at 25% of the reference's cost", "pct"),
             ("cost_for_97pct_quality", "cost for 97% of the reference's quality", "pct"),
             ("default_wtp/quality", "mean quality at the default willingness to pay", "num"),
             ("default_wtp/cost_usd", "mean cost per query at the default willingness to pay (USD)", "usd"),
             ("n_queries", "held-out test queries", "int"))


def per_task_table(summary: Mapping[str, float]) -> pd.DataFrame:
    """One row per task from the report summary's ``task/<task>/<metric>`` figures (index ``task``)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "task" and parts[2] in PER_TASK_COLUMNS:
            rows.setdefault(parts[1], {})[parts[2]] = float(value)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(PER_TASK_COLUMNS))
    table.index.name = "task"
    return table.sort_index()


def _fmt(value: float | None, kind: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return {"pct": f"{100 * value:.1f}%", "usd": f"{value:.6f}", "int": f"{value:.0f}"}.get(kind, f"{value:.4f}")


def run_links(experiment_id: str, run_id: str) -> dict[str, str]:
    """UI links (relative to the MLflow UI's root, so they work behind any host name): the run, its frontier plot
    and per-task table in the artifact browser, and the plot's raw bytes for an inline image."""
    run = f"#/experiments/{experiment_id}/runs/{run_id}"
    return {"run": run, "frontier": f"{run}/artifacts/{FRONTIER_PNG}", "per_task": f"{run}/artifacts/{PER_TASK_CSV}",
            "frontier_image": f"get-artifact?path={quote(FRONTIER_PNG, safe='')}&run_uuid={run_id}"}


def version_description(metrics: Mapping[str, float], tags: Mapping[str, str], per_task: pd.DataFrame,
                        links: Mapping[str, str]) -> str:
    """The Markdown description: verdict, headline figures (beside the champion's when compared), links, tasks."""
    verdict = tags.get("gate_verdict", "not gated")
    reason = tags.get("gate_reason", "")
    compared = tags.get("compared_with_champion", "none")
    head = [f"**Gate: {verdict}**" + (f": {reason}" if reason else ""), "",
            f"Compared with champion version {compared}." if compared != "none" else "No champion to compare with.",
            "", "| figure | this version | champion |", "| --- | --- | --- |"]
    for key, label, kind in HEADLINES:
        if key in metrics:
            head.append(f"| {label} | {_fmt(metrics.get(key), kind)} | {_fmt(metrics.get(f'champion/{key}'), kind)} |")
    head += ["", f"[Run]({links['run']}) · [frontier plot]({links['frontier']}) · "
             f"[per-task table]({links['per_task']})", "", f"![quality-cost frontier]({links['frontier_image']})"]
    text = "\n".join(head)
    if per_task.empty:
        return text[:MAX_DESCRIPTION]
    lines = ["", "", "| task | " + " | ".join(per_task.columns) + " |", "|" + " --- |" * (len(per_task.columns) + 1)]
    cut = f"| ... | full table: [{PER_TASK_CSV}]({links['per_task']}) |"
    used = len(text) + sum(len(x) + 1 for x in lines)
    for task, row in per_task.iterrows():
        cells = [_fmt(row[c], "num" if c == "aiq" else "pct") for c in per_task.columns]
        line = f"| {task} | " + " | ".join(cells) + " |"
        if used + len(line) + 1 + len(cut) > MAX_DESCRIPTION:
            lines.append(cut)  # room is kept for this row, so the link always fits
            break
        lines.append(line)
        used += len(line) + 1
    return (text + "\n".join(lines))[:MAX_DESCRIPTION]
