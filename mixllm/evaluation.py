"""Offline evaluation: replay a test log through the router over a willingness-to-pay sweep, next to baselines.

Why this shape: a router is a cost/quality trade-off, not one number, so every routing policy (the router, each
single LLM, a random router, the oracle, KNN, a task prior, the plain-embedding ablation, ...) is replayed on the
same test queries and summarised by RouterBench's frontier metrics, all in ONE report the pipeline can log and gate on.

Definitions (all figures are *relative to a reference model*, by default the most expensive one on the test log):

- Test set: the test log pivoted to one row per query (key: query_id + prompt, because RouterBench's ARC repeats
  sample_ids) and one column per LLM. An unknown (null) quality counts as 0 for every policy alike (RouterBench's 8
  ARC test rows with an empty cell: the answer was not graded, so no policy gets credit for it); the report counts
  these cells. A query with an unknown cost, or with no row at all for some LLM, is excluded (and counted).
- Sweep point of a policy = (mean cost, mean quality) of its choices over the test set. A choice of -1 ("no
  candidate") scores quality 0 at cost 0. Relative cost/quality = divided by the reference's mean cost/quality on the
  same queries.
- Hull: RouterBench's non-decreasing convex hull: the upper convex hull of the sweep points in (cost, quality),
  starting at the cheapest point and cut at its highest-quality point (a point dominated by a cheaper, better one is
  dropped). Mixing two policies at random reaches every point on a hull segment, which is why the hull is fair.
- quality_at_X_cost: the hull interpolated at relative cost X (0.10, 0.25); beyond the hull's last point the hull's
  best quality; NaN when X is cheaper than the cheapest point (not reachable).
- cost_for_97pct_quality: the smallest relative cost at which the hull reaches 0.97 (interpolated); NaN if never.
- AIQ (average improvement in quality): the mean of the hull's relative quality over relative cost in
  [c_min, 1], c_min = the cheapest single LLM's relative cost on the same queries (one range for every policy, so
  AIQs compare); the hull is extended flat right of its best point and counts 0 left of its cheapest point (so
  adding a sweep point never lowers AIQ); points dearer than the reference are clipped at 1. The issue's reference
  figures (task prior 0.969) use [0, 1] with the hull also extended flat to the LEFT; on RouterBench that variant
  is ~0.005 lower for every policy whose cheapest point is the cheapest LLM, but a cheap low-quality sweep point
  can lower it, so it is not used here.
- APGR / CPT(x) (RouteLLM), only when the test log has exactly two models (strong = higher mean quality): per sweep
  point, PGR = (q - q_weak) / (q_strong - q_weak) against the share of calls to the strong model; the curve gets
  the all-weak (0, 0) and all-strong (1, 1) ends, keeps the best PGR per share and is made non-decreasing in share.
  APGR = area under it over share in [0, 1]; CPT(x) = the smallest share of strong calls with PGR >= x.
- Per-task slices: the same sweep choices restricted to the task's queries, relative to the reference on them.

The policies are registered routers (`mixllm.routers`: the baselines are routers too), the test-set pivot is
`mixllm.testset`, the sweep and the latency-constrained / online-feedback replays are `mixllm.replay`; this module
holds the frontier math, the report and `evaluate`, which walks the router registry by name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixllm.exceptions import ContractError
from mixllm.testset import TestSet

COST_LEVELS = (0.10, 0.25)
QUALITY_TARGET = 0.97
FAST_BASELINES = ("single", "random", "oracle", "task_prior")
ALL_BASELINES = (*FAST_BASELINES, "knn", "lgbm", "mlp", "tfidf_lgbm", "plain_router")


# ------------------------------------------------------------------------------------------- frontier math -----
def nondecreasing_hull(costs: Sequence[float], qualities: Sequence[float]) -> np.ndarray:
    """RouterBench's non-decreasing convex hull of points, as an array [k, 2] sorted by cost (strictly rising)."""
    pts = np.column_stack([np.asarray(costs, float), np.asarray(qualities, float)])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        raise ValueError("no finite (cost, quality) point to build a frontier from")
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]  # by cost, best quality first on ties
    pts = pts[np.r_[True, np.diff(pts[:, 0]) > 0]]  # one point per cost: the best
    hull: list[np.ndarray] = []
    for p in pts:  # Andrew's monotone chain, upper half
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    out = np.array(hull)
    return out[: int(np.argmax(out[:, 1])) + 1]


def hull_value(hull: np.ndarray, cost: float) -> float:
    """Hull quality at `cost`: interpolated, flat after the last point, NaN before the first (not reachable)."""
    if cost < hull[0, 0]:
        return math.nan
    return float(np.interp(cost, hull[:, 0], hull[:, 1]))


def cost_for_quality(hull: np.ndarray, quality: float) -> float:
    """Smallest cost at which the hull reaches `quality` (interpolated); NaN when it never does."""
    if quality > hull[-1, 1]:
        return math.nan
    if quality <= hull[0, 1]:
        return float(hull[0, 0])
    return float(np.interp(quality, hull[:, 1], hull[:, 0]))  # hull quality is strictly rising


def aiq(hull: np.ndarray, lo: float, hi: float = 1.0) -> float:
    """Mean hull quality over cost in [lo, hi]: flat right of the hull, 0 left of it (see module docstring)."""
    if not hi > lo:
        raise ValueError(f"AIQ needs a cost range with hi > lo, got [{lo}, {hi}]")
    start = max(lo, float(hull[0, 0]))
    if start >= hi:
        return 0.0
    xs = np.unique(np.clip(np.r_[start, hi, hull[:, 0]], start, hi))
    return float(np.trapezoid(np.interp(xs, hull[:, 0], hull[:, 1]), xs)) / (hi - lo)


def apgr_cpt(strong_share: Sequence[float], pgr: Sequence[float],
             levels: Iterable[float] = (0.5, 0.8)) -> dict[str, float]:
    """RouteLLM's APGR and CPT(x) from (share of strong calls, PGR) sweep points (see module docstring)."""
    s = np.r_[0.0, np.asarray(strong_share, float), 1.0]
    p = np.r_[0.0, np.asarray(pgr, float), 1.0]
    frame = pd.DataFrame({"s": s, "p": p}).groupby("s", as_index=False)["p"].max()
    xs, ys = frame["s"].to_numpy(), np.maximum.accumulate(frame["p"].to_numpy())
    out = {"apgr": float(np.trapezoid(ys, xs))}
    for level in levels:
        hit = np.nonzero(ys >= level)[0]
        if len(hit) == 0:
            out[f"cpt_{round(level * 100)}pct"] = math.nan
            continue
        i = hit[0]
        if i == 0 or ys[i] == ys[i - 1]:
            out[f"cpt_{round(level * 100)}pct"] = float(xs[i])
        else:  # interpolate inside the segment that crosses the level
            t = (level - ys[i - 1]) / (ys[i] - ys[i - 1])
            out[f"cpt_{round(level * 100)}pct"] = float(xs[i - 1] + t * (xs[i] - xs[i - 1]))
    return out


def frontier_metrics(rel_costs: Sequence[float], rel_qualities: Sequence[float], aiq_lo: float) -> dict[str, Any]:
    """Headline figures of one policy from its relative sweep points."""
    hull = nondecreasing_hull(rel_costs, rel_qualities)
    out: dict[str, Any] = {f"quality_at_{round(x * 100)}pct_cost": hull_value(hull, x) for x in COST_LEVELS}
    out["cost_for_97pct_quality"] = cost_for_quality(hull, QUALITY_TARGET)
    out["aiq"] = aiq(hull, min(aiq_lo, 1.0 - 1e-9), 1.0)
    out["max_quality"] = float(hull[-1, 1])
    out["cost_at_max_quality"] = float(hull[-1, 0])
    out["hull"] = hull.tolist()
    return out


# ------------------------------------------------------------------------------------------- the report --------
def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class PolicyResult:
    """One policy's sweep points (relative), headline metrics and per-task metrics."""

    name: str
    kind: str  # "router", "baseline" or "single"
    note: str
    points: list[dict[str, float]]
    metrics: dict[str, Any]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    choices: np.ndarray | None = field(default=None, repr=False)  # [sweep point, query] test-set columns (not in JSON)


HEADLINE = ("quality_at_10pct_cost", "quality_at_25pct_cost", "cost_for_97pct_quality", "aiq", "max_quality",
            "cost_at_max_quality")


@dataclass
class EvaluationReport:
    """Everything one evaluation run measured; `summary` is the flat view for `mlflow.log_metrics`."""

    reference: str
    models: tuple[str, ...]
    n_queries: int
    excluded_queries: int
    unknown_quality_cells: int
    policies: dict[str, PolicyResult]
    main: str | None = None
    latency: dict[str, Any] | None = None
    online: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        """Headline metrics of the main policy (the router), per task, per baseline (not each single LLM: their
        mix stands for them) and of the latency replay; NaN where a figure is not reachable."""
        out: dict[str, float] = {"n_queries": float(self.n_queries)}
        if self.main is not None:
            res = self.policies[self.main]
            out.update({k: _num(res.metrics.get(k)) for k in (*HEADLINE, "apgr", "cpt_50pct", "cpt_80pct")
                        if k in res.metrics})
            for task, m in res.tasks.items():
                out.update({f"task/{task}/{k}": _num(m.get(k)) for k in HEADLINE})
        for name, res in self.policies.items():
            if name != self.main and res.kind != "single":
                out.update({f"baseline/{name}/{k}": _num(res.metrics.get(k)) for k in
                            ("aiq", "quality_at_25pct_cost") if k in res.metrics})
        for mode, figures in (self.latency or {}).get("replays", {}).items():
            out.update({f"latency/{mode}/{k}": _num(v) for k, v in figures.items() if isinstance(v, (int, float))})
        for scenario, levels in (self.online or {}).get("scenarios", {}).items():
            for level, row in levels.items():
                for mode in ("frozen", "refined", "thumbs"):
                    out.update({f"online/{scenario}/{level}/{mode}/{k}": _num(v) for k, v in row[mode].items()
                                if k in ("rel_quality", "rel_cost", "degraded_share")})
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "reference": self.reference, "models": list(self.models), "n_queries": self.n_queries,
            "excluded_queries": self.excluded_queries, "unknown_quality_cells": self.unknown_quality_cells,
            "main": self.main, "summary": self.summary, "skipped": self.skipped, "timings_s": self.timings_s,
            "policies": {n: {"kind": r.kind, "note": r.note, "metrics": r.metrics, "tasks": r.tasks,
                             "points": r.points} for n, r in self.policies.items()},
            "latency": self.latency, "online": self.online,
        })

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        """A table: one row per policy, figures relative to the reference (quality and cost in %)."""
        pct = lambda v: "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"  # noqa: E731
        lines = [f"Relative to `{self.reference}` on {self.n_queries} test queries "
                 f"({self.unknown_quality_cells} unknown quality cells counted as 0, "
                 f"{self.excluded_queries} queries excluded).", "",
                 "| policy | quality @10% cost | quality @25% cost | cost for 97% quality | AIQ | best quality @ cost |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for name, r in self.policies.items():
            m = r.metrics
            label = f"**{name}**" if name == self.main else name
            lines.append(f"| {label} | {pct(m['quality_at_10pct_cost'])} | {pct(m['quality_at_25pct_cost'])} | "
                         f"{pct(m['cost_for_97pct_quality'])} | {m['aiq']:.4f} | "
                         f"{pct(m['max_quality'])} @ {pct(m['cost_at_max_quality'])} |")
        for name, why in self.skipped.items():
            lines.append(f"| {name} | skipped: {why} | | | | |")
        if self.latency:
            lines += ["", f"Latency-constrained replay ({self.latency['config']}):", "",
                      "| replay | quality | cost | timeouts | mean wait (ms) | p95 wait (ms) |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for mode, f in self.latency["replays"].items():
                lines.append(f"| {mode} | {pct(f['rel_quality'])} | {pct(f['rel_cost'])} | {int(f['timeouts'])} "
                             f"| {f['mean_wait_ms']:.0f} | {f['p95_wait_ms']:.0f} |")
        if self.online:
            lines += ["", f"Online replay with feedback ({self.online['config']}); quality / cost relative to the "
                      "reference; refined = observed quality and cost fed back, thumbs = up/down only:", "",
                      "| stream | frozen cost point | frozen | refined feedback | thumbs feedback |",
                      "| --- | --- | --- | --- | --- |"]
            for scenario, levels in self.online["scenarios"].items():
                for level, row in levels.items():
                    cell = lambda f: (f"{pct(f['rel_quality'])} / {pct(f['rel_cost'])}"  # noqa: E731
                                      + (f" ({100 * f['degraded_share']:.1f}% to it)" if "degraded_share" in f else ""))
                    label = scenario if row["degraded_model"] is None else f"{scenario}: {row['degraded_model']} fails"
                    lines.append(f"| {label} | ~{level.replace('pct', '%')} | {cell(row['frozen'])} | "
                                 f"{cell(row['refined'])} | {cell(row['thumbs'])} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path | str, dpi: int = 80) -> Path:
        """Frontier plot (PNG): each policy's sweep points and non-decreasing convex hull, relative axes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        singles = [r for r in self.policies.values() if r.kind == "single"]
        if singles:
            ax.scatter([r.points[0]["rel_cost"] for r in singles], [r.points[0]["rel_quality"] for r in singles],
                       marker="x", color="grey", label="single LLMs")
        for name, r in self.policies.items():
            if r.kind == "single":
                continue
            hull = np.array(r.metrics["hull"])
            style = {"linewidth": 2.5, "color": "black"} if name == self.main else {"linewidth": 1.2}
            ax.plot(hull[:, 0], hull[:, 1], marker=".", label=name, **style)
        ax.set_xscale("log")
        ax.axvline(0.25, color="grey", linestyle=":", linewidth=0.8)
        ax.axhline(QUALITY_TARGET, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel(f"cost relative to {self.reference}")
        ax.set_ylabel(f"quality relative to {self.reference}")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return path


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


# ------------------------------------------------------------------------------------------- evaluate ----------
def policy_result(test: TestSet, name: str, kind: str, note: str, params: np.ndarray, choices: np.ndarray,
                  ref: int) -> PolicyResult:
    """Relative sweep points and metrics of one policy, overall and per task (each against its own reference)."""
    def metrics(rows: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        rc, rq = test.cost[rows, ref].mean(), test.quality[rows, ref].mean()
        if not (rc > 0 and rq > 0):
            raise ContractError(f"reference model {test.models[ref]!r} has zero mean cost or quality on "
                                f"{len(rows)} queries; choose another reference")
        costs, quals = test.outcomes(choices, rows)
        lo = test.cost[rows].mean(axis=0).min() / rc
        out = frontier_metrics(costs / rc, quals / rq, lo)
        if len(test.models) == 2:
            out.update(_two_model(test, choices, rows))
        return out, costs / rc, quals / rq

    overall, rel_c, rel_q = metrics(np.arange(test.n))
    points = [{"param": float(p), "rel_cost": float(c), "rel_quality": float(q)}
              for p, c, q in zip(params, rel_c, rel_q)]
    tasks = {}
    for t in sorted(set(test.tasks)):
        rows = np.nonzero(test.tasks == t)[0]
        try:
            tasks[str(t)] = {k: v for k, v in metrics(rows)[0].items() if k != "hull"}
        except ContractError:
            continue  # a task where the reference never succeeds has no relative figures
    return PolicyResult(name, kind, note, points, overall, tasks, np.asarray(choices, dtype=int))


def _two_model(test: TestSet, choices: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    means = test.quality[rows].mean(axis=0)
    strong, weak = (0, 1) if means[0] >= means[1] else (1, 0)
    if means[strong] == means[weak]:
        return {}
    _, quals = test.outcomes(choices, rows)
    share = (choices[:, rows] == strong).mean(axis=1)
    return apgr_cpt(share, (quals - means[weak]) / (means[strong] - means[weak]))


def default_wtps() -> np.ndarray:
    """Willingness-to-pay grid (dollars per unit quality, score = quality - cost / wtp): 12 points per decade
    from 1e-8 (always the cheapest LLM on RouterBench-size costs) to 1e2 (always the best predicted)."""
    return np.geomspace(1e-8, 1e2, 121)


def evaluate(router: Any, test_log: pd.DataFrame, *, wtps: Sequence[float] | None = None, reference: str | None = None,
             baselines: Iterable[str] = FAST_BASELINES, train_log: pd.DataFrame | None = None, seed: int = 0,
             latency: Any = None, online: Any = None, name: str = "router",
             router_options: Mapping[str, Mapping[str, Any]] | None = None) -> EvaluationReport:
    """Replay `test_log` through `router` (may be None: baselines only) and the chosen baselines; one report.

    baselines: names of registered routers (`mixllm.routers.registry.ROUTERS`); each class builds its fitted
    router(s) from the train and test logs (`Router.for_evaluation`), and one that learns from a train log is
    skipped, with the reason, without one. Routers of kind "single" are also reported as their mix
    ("single_mix"). router_options: constructor options per registry name (e.g. {"knn": {"k": 50}}; default: each
    class's own defaults). latency: a `mixllm.replay.LatencyConfig` (or True for its defaults) to add the
    latency-constrained replay of `router`. online: a `mixllm.replay.OnlineConfig` (or True) to add the
    continual-learning replay (frozen router vs the router receiving refined / thumbs feedback on the same
    stream; the evaluated router is not changed).
    """
    import time

    from mixllm import replay
    from mixllm.routers.base import NeedsTrainLog
    from mixllm.routers.registry import router_class

    classes = {b: router_class(b) for b in baselines}  # ConfigError naming the registered routers
    options = {k: dict(v) for k, v in (router_options or {}).items()}
    test = TestSet.from_log(test_log)
    if reference is None:
        reference = test.models[int(np.argmax(test.cost.mean(axis=0)))]
    if reference not in test.models:
        raise ContractError(f"reference model {reference!r} has no rows in the test log "
                            f"(models: {', '.join(test.models)})")
    ref = test.models.index(reference)
    wtps = default_wtps() if wtps is None else np.asarray(sorted(wtps), float)
    report = EvaluationReport(reference, test.models, test.n, test.excluded, test.imputed, {})
    pred = None

    def add(sweep: Any, kind: str) -> None:
        report.policies[sweep.name] = policy_result(test, sweep.name, kind, sweep.note, sweep.params,
                                                    sweep.choices, ref)

    if router is not None:
        t0 = time.perf_counter()
        pred = replay.predict_test(router, test)
        add(replay.router_sweep(name, router, test, wtps, pred), "router")
        report.main = name
        report.timings_s[name] = time.perf_counter() - t0
    for b, cls in classes.items():
        t0 = time.perf_counter()
        try:
            routers = cls.for_evaluation(train_log, test_log, seed=seed, **options.get(b, {}))
        except NeedsTrainLog:
            report.skipped[b] = "needs train_log"
            continue
        sweeps = [replay.router_sweep(label, r, test, wtps, note=getattr(r, "note", None))
                  for label, r in routers.items()]
        for sweep in sweeps:
            add(sweep, "single" if cls.kind == "single" else "baseline")
        if cls.kind == "single":
            add(single_mix(sweeps), "baseline")
        report.timings_s[b] = time.perf_counter() - t0
    _stream_replays(report, router, test, ref, pred, latency, online)
    return report


def _stream_replays(report: EvaluationReport, router: Any, test: TestSet, ref: int, pred: Any, latency: Any,
                    online: Any) -> None:
    """The latency-constrained and online-feedback replays of the main router, when asked for (True: defaults)."""
    import time

    from mixllm import replay

    if latency is not None and latency is not False:
        if router is None:
            report.skipped["latency"] = "needs a router"
        else:
            t0 = time.perf_counter()
            cfg = replay.LatencyConfig() if latency is True else latency
            report.latency = replay.latency_replay(router, test, cfg, ref, pred=pred,
                                                   sweep=report.policies[report.main])
            report.timings_s["latency"] = time.perf_counter() - t0
    if online is not None and online is not False:
        if router is None or not hasattr(router, "learn"):
            report.skipped["online"] = "needs a router that learns from feedback"
        else:
            t0 = time.perf_counter()
            cfg = replay.OnlineConfig() if online is True else online
            report.online = replay.online_replay(router, test, cfg, ref, pred=pred,
                                                 sweep=report.policies[report.main])
            report.timings_s["online"] = time.perf_counter() - t0


def single_mix(singles: Sequence[Any]) -> Any:
    """Every single LLM's sweep as one policy: its hull is RouterBench's random mix (linear interpolation) of them."""
    from mixllm.replay import Sweep

    choices = np.vstack([s.choices for s in singles])
    return Sweep("single_mix", np.full(len(choices), np.nan), choices,
                 note="hull of the single-LLM points (random mixing of two LLMs)")
