"""Routing quality on both bundled datasets x both conditions: train split -> test split, router vs every baseline,
paired bootstrap intervals, ONE run.

Datasets: the RouterBench sample (3 tasks, 11 LLMs, 953 test queries; reference gpt-4-1106-preview) and the LLMRouter
data (14 tasks, 9 open LLMs, 500 test queries; reference llama-3.1-nemotron-51b-instruct). Conditions:
- labels: the logs carry their `task` column; the router trains on those tags and is told each test query's task
  (`RouterConfig.task_labels`), as the task prior is;
- production: the task column is removed from the train AND test logs; the router's own tagger decides the tags
  (`RouterConfig.untagged`) and tags each test query from its prompt as in serving (default: surface clusters).
Policies, every one a registered router (`mixllm.routers`): the router (library defaults), every single LLM and
their mix, random, oracle (upper bound), task prior (labels: a reference a user of production logs does not have;
shown in the production table as "task_prior (labels)"), KNN-20, LightGBM and the RouterBench MLP on plain MiniLM,
LightGBM on TF-IDF, and the encoder ablation: the router with the other representation (`plain_router` when the
default is tag-enhanced, `tagged_router` = the tag-enhanced adapter when the default is plain MiniLM). Baselines
that never read a task (single, random, oracle, knn, lgbm, mlp, tfidf_lgbm) give the same decisions in both
conditions: they are fitted once per dataset and shown in both tables. For each dataset x condition: 95% paired
bootstrap intervals of router - policy on AIQ and quality at 25% cost (`mixllm.stats`, --resamples draws of the test
queries shared by every policy), per-LLM cost MdAPE (router's predicted vs logged cost per test query), the bars.
Seeds: the router and its ablation on RouterBench with labels over --seeds seeds (the no-regression bar is their
mean); every other cell seed 0 only (wall time on the shared 2-core box), intervals from seed 0's decisions.
Writes bench/results/quality.json, quality.png (RouterBench, labels), quality_llmrouter.png and the `quality`
section of BENCHMARKS.md. Nothing is tuned on the test split: every hyper-parameter is the library default, chosen
by grouped cross-validation on train (`bench/tune.py`, bench/results/tune.md).

Usage: python bench/quality.py [--seeds 3] [--resamples 1000] [--datasets routerbench llmrouter] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = {"routerbench": ("routerbench", "gpt-4-1106-preview"),
            "llmrouter": ("llmrouter", "llama-3.1-nemotron-51b-instruct")}
CONDITIONS = ("labels", "production")
HEADLINE = ("quality_at_10pct_cost", "quality_at_25pct_cost", "cost_for_97pct_quality", "aiq")
TASK_FREE = ("single", "random", "oracle", "knn", "lgbm", "mlp", "tfidf_lgbm")  # never read a task label
RB_BAR = {"quality_at_25pct_cost": 0.968, "aiq": 0.9766}  # issue 14: no regression on RouterBench
PROD_GAP = 0.01  # production within 1 point of quality@25% of the labelled condition
LABELLED_REF = "task_prior (labels)"
SELF = "(router itself)"  # intervals key: the router's own bootstrap percentile interval, not a difference


def _pct(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _stats(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def load(dataset: str):
    from mixllm.data import load_routerbench, load_training_log

    if dataset == "routerbench":
        d = ROOT / "data" / "routerbench"
        return load_routerbench(d, "train"), load_routerbench(d, "test")
    d = ROOT / "data" / "llmrouter"
    return load_training_log(d / "llmrouter_train.csv.gz"), load_training_log(d / "llmrouter_test.csv.gz")


def _limit(log, max_queries: int | None):
    """The first `max_queries` queries spread evenly over tasks (smoke runs); every query when None."""
    if not max_queries:
        return log
    first = log.drop_duplicates("query_id")
    keep = first.groupby("task").head(max(1, max_queries // first["task"].nunique()))["query_id"]
    return log[log["query_id"].isin(keep)].reset_index(drop=True)


def ablation_name() -> str:
    """The encoder ablation: the other representation than the default's (plain <-> tag-enhanced adapter)."""
    from mixllm.router import RouterConfig

    return "tagged_router" if RouterConfig().representation == "plain" else "plain_router"


def cost_mdape(router, test) -> dict[str, float]:
    """Per LLM: median over test queries of |predicted - logged cost| / logged cost (the router's `predict`)."""
    from mixllm.replay import predict_test

    pred = predict_test(router, test)
    out = {}
    for j, m in enumerate(pred.models):
        true = test.cost[:, test.models.index(m)]
        ok = np.isfinite(true) & (true > 0) & np.isfinite(pred.cost[:, j])
        out[m] = float(np.median(np.abs(pred.cost[ok, j] - true[ok]) / true[ok])) if ok.any() else math.nan
    return out


def intervals(report, test_log, resamples: int, seed: int = 0) -> dict[str, dict]:
    """Paired bootstrap of router - policy for every non-single policy of the report (the singles' mix stands
    for them: its hull contains every single point, so beating it beats each)."""
    from mixllm.stats import bootstrap_metrics, compare, resample_indices
    from mixllm.testset import TestSet

    test = TestSet.from_log(test_log)
    ref = test.models.index(report.reference)
    policies = {n: r.choices for n, r in report.policies.items() if r.kind != "single"}
    samples = bootstrap_metrics(test.cost, test.quality, policies, ref, resample_indices(test.n, resamples, seed))
    point = {n: report.policies[n].metrics for n in policies}
    out = {n: {m: iv.as_dict() for m, iv in d.items()} for n, d in compare(samples, point, report.main).items()}
    # the router's own figure on resamples of the test queries: how far a point bar like 96.8% is resolvable
    out["(router itself)"] = {m: {"estimate": point[report.main][m],
                                  **dict(zip(("low", "high"), np.nanpercentile(v, [2.5, 97.5]).tolist()))}
                              for m, v in samples[report.main].items()}
    return out


def production_gap(labelled, production, test_log, resamples: int, seed: int = 0) -> dict:
    """The production router against the labelled one on the same test queries (seed 0 of each).

    Why: the bar "production within 1 point of labels" compares two figures that each carry the test split's
    sampling noise; the paired bootstrap (the same resample of queries for both routers' fixed decisions) says how
    large the gap could be by the luck of the draw alone. Also each labelled task's figures for the production
    router (its decisions scored on the labelled log's tasks), to see where the gap comes from."""
    from mixllm.evaluation import policy_result
    from mixllm.stats import bootstrap_metrics, compare, resample_indices
    from mixllm.testset import TestSet

    test = TestSet.from_log(test_log)
    ref = test.models.index(labelled.reference)
    lab, prod = labelled.policies["router"], production.policies["router"]
    samples = bootstrap_metrics(test.cost, test.quality, {"labels": lab.choices, "production": prod.choices}, ref,
                                resample_indices(test.n, resamples, seed))
    gap = compare(samples, {"labels": lab.metrics, "production": prod.metrics}, "labels")["production"]
    params = np.array([pt["param"] for pt in prod.points])
    tasks = policy_result(test, "router", "router", "", params, prod.choices, ref).tasks
    without = {}  # the whole-set gap with one task's queries left out: is the gap one task's?
    lab_params = np.array([pt["param"] for pt in lab.points])
    for task in sorted(set(test.tasks.astype(str))):
        keep = np.nonzero(test.tasks.astype(str) != task)[0]
        sub = dataclasses.replace(test, query_ids=test.query_ids[keep], prompts=[test.prompts[i] for i in keep],
                                  tasks=test.tasks[keep], prompt_tokens=test.prompt_tokens[keep],
                                  quality=test.quality[keep], cost=test.cost[keep],
                                  completion_tokens=test.completion_tokens[keep])
        a = policy_result(sub, "l", "router", "", lab_params, lab.choices[:, keep], ref).metrics
        b = policy_result(sub, "p", "router", "", params, prod.choices[:, keep], ref).metrics
        without[task] = {m: float(a[m]) - float(b[m]) for m in ("aiq", "quality_at_25pct_cost")}
    return {"labels_minus_production": {m: iv.as_dict() for m, iv in gap.items()}, "production_tasks": tasks,
            "gap_without_task": without}


def run_condition(dataset: str, condition: str, logs, seeds: list[int], args, labelled=None) -> dict:
    """One dataset x condition: router per seed (+ ablation), baselines once, intervals, MdAPE."""
    from mixllm.catalogue import load_catalogue
    from mixllm.evaluation import evaluate
    from mixllm.replay import LatencyConfig, OnlineConfig
    from mixllm.router import MixLLMRouter, RouterConfig
    from mixllm.testset import TestSet

    catalogue_name, reference = DATASETS[dataset]
    catalogue = load_catalogue(catalogue_name)
    train, test = logs if condition == "labels" else (logs[0].assign(task=None), logs[1].assign(task=None))
    ablation = ablation_name()
    options = {ablation: {"catalogue": catalogue}}
    per_seed, timings, main = {"router": [], ablation: []}, {}, None
    for seed in seeds:
        t0 = time.perf_counter()
        router = MixLLMRouter(RouterConfig(seed=seed, progress=False), catalogue).fit(train)
        timings[f"train router seed {seed}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = seed == seeds[0]
        names = (*TASK_FREE, "task_prior", ablation) if first and condition == "labels" else (ablation,)
        if args.gap_only:
            names = ()
        extra = {"latency": LatencyConfig(seed=seed), "online": OnlineConfig(seed=seed)} \
            if first and dataset == "routerbench" and condition == "labels" else {}
        report = evaluate(router, test, reference=reference, baselines=names, train_log=train, seed=seed,
                          router_options=options, **extra)
        timings[f"evaluate seed {seed}"] = time.perf_counter() - t0
        timings.update({f"  seed {seed}: {k}": v for k, v in report.timings_s.items()})
        for name in [n for n in per_seed if n in report.policies]:
            per_seed[name].append({k: report.policies[name].metrics[k] for k in (*HEADLINE, "max_quality")})
        if first:
            main, mdape = report, cost_mdape(router, TestSet.from_log(test))
        other = report.policies.get(ablation)
        print(f"{dataset}/{condition} seed {seed}: router {report.policies['router'].metrics['aiq']:.4f} AIQ, "
              f"{_pct(report.policies['router'].metrics['quality_at_25pct_cost'])} @25%"
              + (f"; {ablation} {other.metrics['aiq']:.4f}" if other else ""), flush=True)
    if labelled is not None:  # production: the task-free baselines and the labelled task prior, same test queries
        same = TestSet.from_log(test).query_ids.tolist() == TestSet.from_log(logs[1]).query_ids.tolist()
        if not same:
            raise SystemExit(f"{dataset}: the test set's query order differs without labels; cannot share baselines")
        for name, r in labelled["report"].policies.items():
            if name not in ("router", ablation):
                main.policies[LABELLED_REF if name == "task_prior" else name] = r
    t0 = time.perf_counter()
    ivs = intervals(main, test, args.resamples)
    extra = {} if labelled is None else production_gap(labelled["report"], main, logs[1], args.resamples)
    timings["bootstrap"] = time.perf_counter() - t0
    stats = {n: {k: _stats([r[k] for r in rows]) for k in rows[0]} for n, rows in per_seed.items() if rows}
    return {"report": main, "per_seed": per_seed, "seeds": seeds, "seed_stats": stats, "intervals": ivs, **extra,
            "cost_mdape": mdape, "timings": timings, "completion_tokens_known": bool(train["completion_tokens"]
                                                                                   .notna().any()),
            "task_shares": {"train": _shares(logs[0]), "test": _shares(logs[1]), "repeated": _repeated(*logs),
                            "chars": _chars(*logs)}}


def _shares(log) -> dict[str, float]:
    """Each task's share of the split's queries (the labelled log's task column)."""
    return log.drop_duplicates("query_id")["task"].astype(str).value_counts(normalize=True).to_dict()


def _chars(train, test) -> dict[str, list[float]]:
    """Per task: the median prompt length in characters of its train and test queries. Why: a task label can
    cover different prompts in the two splits (LLMRouter's train "mmlu" rows are long reading passages, its test
    "mmlu" rows short exam questions); told the label, a router carries train's outcomes over, tagging the prompt
    cannot."""
    def med(log) -> dict[str, float]:
        first = log.drop_duplicates("query_id")
        return first["prompt"].astype(str).str.len().groupby(first["task"].astype(str)).median().to_dict()

    a, b = med(train), med(test)
    return {t: [float(a.get(t, math.nan)), float(b[t])] for t in b}


def _repeated(train, test) -> dict[str, float]:
    """Per task: the share of its test queries whose exact prompt is also a train query (LLMRouter's split repeats
    prompts under new ids; grouped CV on train never does, as folds are grouped by prompt)."""
    first = test.drop_duplicates("query_id")
    return first["prompt"].isin(set(train["prompt"])).groupby(first["task"].astype(str)).mean().to_dict()


def verdicts(results: dict) -> dict:
    """The issue-14 bars, from the figures of this run."""
    out = {}
    for dataset, conds in results.items():
        for condition, r in conds.items():
            rivals = {n: iv for n, iv in r["intervals"].items() if n not in ("oracle", LABELLED_REF, SELF)}
            if not rivals:  # --gap-only: no baselines ran, nothing to beat
                continue
            failing = {n: iv["aiq"] for n, iv in rivals.items() if not iv["aiq"]["above_zero"]}
            out[f"{dataset}/{condition}"] = {"beats_every_baseline_aiq_ci_above_0": not failing,
                                             "not_beaten": {n: [iv["estimate"], iv["low"], iv["high"]]
                                                            for n, iv in failing.items()}}
        if {"labels", "production"} <= set(conds):
            lab = conds["labels"]["report"].policies["router"].metrics["quality_at_25pct_cost"]
            prod = conds["production"]["report"].policies["router"].metrics["quality_at_25pct_cost"]
            iv = conds["production"].get("labels_minus_production", {}).get("quality_at_25pct_cost")
            out[f"{dataset}/production_within_1pt_of_labels"] = {"labels": lab, "production": prod,
                                                                   "gap": lab - prod, "pass": lab - prod <= PROD_GAP,
                                                                   "gap_ci95": iv and [iv["low"], iv["high"]]}
    if "labels" in results.get("routerbench", {}):
        s = results["routerbench"]["labels"]["seed_stats"]["router"]
        own = results["routerbench"]["labels"]["intervals"].get(SELF, {})
        out["routerbench/no_regression"] = {k: {"mean": s[k][0], "bar": bar, "pass": s[k][0] >= bar,
                                                "seed0_ci95": [own[k]["low"], own[k]["high"]] if k in own else None}
                                            for k, bar in RB_BAR.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="router seeds on RouterBench with labels (others: seed 0)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--max-queries", type=int, default=None, help="smoke run: the first N queries of each split "
                    "(spread over tasks); never for published figures")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-write", action="store_true", help="Do not touch BENCHMARKS.md.")
    ap.add_argument("--gap-only", action="store_true", help="the router in both conditions, no baselines or "
                    "ablation: the production - labels gap alone (implies --no-write)")
    args = ap.parse_args()
    args.no_write = args.no_write or args.gap_only
    from mixllm.telemetry import go_offline

    go_offline()
    t_all, results = time.perf_counter(), {}
    for dataset in args.datasets:
        logs, results[dataset] = tuple(_limit(log, args.max_queries) for log in load(dataset)), {}
        for condition in CONDITIONS:
            seeds = list(range(args.seeds)) if (dataset, condition) == ("routerbench", "labels") else [0]
            results[dataset][condition] = run_condition(dataset, condition, logs, seeds, args,
                                                        results[dataset].get("labels"))
            _publish(args, results, time.perf_counter() - t_all)  # an interrupted run keeps what it finished
    return 0


def _publish(args, results: dict, total_s: float) -> None:
    from mixllm.evaluation import _clean

    bars = verdicts(results)
    markdown = _markdown(results, bars, total_s, args)
    print(markdown, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"measured": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "resamples": args.resamples,
           "bars": bars, "total_s": total_s, "datasets": {}}
    for dataset, conds in results.items():
        for condition, r in conds.items():
            rep = r["report"].to_dict()
            doc["datasets"].setdefault(dataset, {})[condition] = {
                "report": rep, "seeds": r["seeds"], "per_seed": r["per_seed"],
                "mean_std": {n: {k: list(v) for k, v in s.items()} for n, s in r["seed_stats"].items()},
                "intervals_router_minus": r["intervals"], "cost_mdape": r["cost_mdape"],
                **{k: r[k] for k in ("labels_minus_production", "production_tasks", "gap_without_task") if k in r},
                "completion_tokens_known": r["completion_tokens_known"], "task_shares": r["task_shares"],
                "timings_s": {k: round(v, 2) for k, v in r["timings"].items()}}
    (args.out / "quality.json").write_text(json.dumps(_clean(doc), indent=1, allow_nan=False), encoding="utf-8")
    for dataset, png in (("routerbench", "quality.png"), ("llmrouter", "quality_llmrouter.png")):
        if "labels" in results.get(dataset, {}):
            results[dataset]["labels"]["report"].plot(args.out / png, dpi=70)
    if not args.no_write:
        _write_section(ROOT / "BENCHMARKS.md", markdown)


def _ci(iv: dict | None, scale: float = 1.0, fmt: str = "{:+.4f}") -> str:
    if iv is None or iv["estimate"] is None or not math.isfinite(iv["estimate"]):
        return "-"
    mark = " ✓" if iv["above_zero"] else ""
    est, low, high = (fmt.format(scale * iv[k]) for k in ("estimate", "low", "high"))
    return f"{est} [{low}, {high}]{mark}"


def _table(r: dict) -> list[str]:
    rep = r["report"]
    lines = ["| policy | quality @10% | quality @25% | AIQ | best quality @ cost | router − policy: AIQ [95% CI] | "
             "router − policy: quality @25%, points [95% CI] |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, p in rep.policies.items():
        if p.kind == "single":
            continue
        m, iv = p.metrics, r["intervals"].get(name)
        label = f"**{name}**" if name == rep.main else name
        lines.append(f"| {label} | {_pct(m['quality_at_10pct_cost'])} | {_pct(m['quality_at_25pct_cost'])} | "
                     f"{m['aiq']:.4f} | {_pct(m['max_quality'])} @ {_pct(m['cost_at_max_quality'])} | "
                     f"{_ci(iv and iv['aiq'])} | {_ci(iv and iv['quality_at_25pct_cost'], 100, '{:+.1f}')} |")
    singles = [(n.split(":", 1)[1], p.metrics) for n, p in rep.policies.items() if p.kind == "single"]
    lines += ["", "Single LLMs (quality / cost relative to the reference): " + ", ".join(
        f"{n} {_pct(m['max_quality'])} / {_pct(m['cost_at_max_quality'])}" for n, m in singles) + "."]
    return lines


def _task_table(r: dict) -> list[str]:
    """Per-task AIQ of the router and the learned baselines beside each task's share of train and test queries.
    Why: a router chosen by CV on train can lose on test while winning in CV (bench/results/tune.md,
    quality_blend) when the test split differs from train's folds: LLMRouter's test split holds 10 of 14 tasks at
    50 queries each (its small tasks weigh 3-4x their train share) and repeats train prompts under new ids (every
    gpqa and human_eval test query), which a model that memorises prompts exploits and grouped CV never shows."""
    rep, shares = r["report"], r["task_shares"]
    names = [n for n in ("router", "lgbm", "knn20", "mlp", "task_prior") if n in rep.policies]
    lines = ["", "Per task (AIQ on that task's test queries; share of train / test queries; share of the task's test "
             "queries whose exact prompt is in train):", "",
             "| task | train | test | prompt in train | median prompt chars train / test | " + " | ".join(names) + " |",
             "| --- | --- | --- | --- | --- |" + " --- |" * len(names)]
    for task in rep.policies["router"].tasks:
        cells = [rep.policies[n].tasks.get(task, {}).get("aiq") for n in names]
        lines.append(f"| {task} | {_pct(shares['train'].get(task, 0.0))} | {_pct(shares['test'].get(task, 0.0))} | "
                     f"{_pct(shares['repeated'].get(task, 0.0))} | "
                     + ("{:.0f} / {:.0f} | ".format(*shares["chars"][task]) if task in shares.get("chars", {})
                        else "- | ")
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    return lines


def _gap_table(labelled: dict, production: dict) -> list[str]:
    """Per labelled task: the router's AIQ and quality@25% with labels vs in production, and the interval of the
    whole-test-set gap (labels - production)."""
    lab, prod = labelled["report"].policies["router"].tasks, production["production_tasks"]
    gap = production["labels_minus_production"]
    lines = ["", "Router with labels − router in production, paired bootstrap on the same test queries: AIQ "
             f"{_ci(gap['aiq'])}, quality @25% points {_ci(gap['quality_at_25pct_cost'], 100, '{:+.1f}')}. "
             "Per labelled task (production decisions scored on the labelled log's tasks):", "",
             "| task | AIQ labels | AIQ production | quality @25% labels | quality @25% production | "
             "whole-set gap without this task: AIQ / quality @25% points |",
             "| --- | --- | --- | --- | --- | --- |"]
    for task in lab:
        a, b = lab[task], prod.get(task, {})
        w = production.get("gap_without_task", {}).get(task)
        lines.append(f"| {task} | {a.get('aiq', math.nan):.3f} | {b.get('aiq', math.nan):.3f} | "
                     f"{_pct(a.get('quality_at_25pct_cost'))} | {_pct(b.get('quality_at_25pct_cost'))} | "
                     + (f"{w['aiq']:+.4f} / {100 * w['quality_at_25pct_cost']:+.1f} |" if w else "- |"))
    return lines


def _markdown(results: dict, bars: dict, total_s: float, args) -> str:
    lines = [f"Command: `python bench/quality.py {' '.join(sys.argv[1:])}`.", "",
             f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} ({_cores()} cores, "
             f"shared) by `bench/quality.py`; train split -> test split, library defaults (chosen by grouped CV on "
             f"train, `bench/tune.py`; nothing tuned on test). Intervals: paired bootstrap over test queries, "
             f"{args.resamples} resamples shared by every policy (`mixllm.stats`), router (seed 0) − policy; ✓ = "
             "95% interval above 0. Conditions: *labels* = the logs' task column (the router is told each query's "
             "task, as the task prior is); *production* = task column removed from train and test (tags from the "
             "router's own tagger, test queries tagged from their prompt as in serving). Baselines that never read "
             "a task are fitted once per dataset and shown in both conditions; `task_prior (labels)` in production is "
             "a reference that knows labels a user does not have. Singles are summarised by their mix "
             "(`single_mix`: its hull holds every single point).", "", "**Bars (issue 14):**", ""]
    for key, v in bars.items():
        if key.endswith("/no_regression"):
            lines.append(f"- {key}: " + "; ".join(f"{k} {v[k]['mean']:.4f} (bar {v[k]['bar']}) "
                                                   f"{'PASS' if v[k]['pass'] else 'FAIL'}" + (
                                                       f" (seed 0's 95% bootstrap interval on the test queries "
                                                       f"[{v[k]['seed0_ci95'][0]:.4f}, {v[k]['seed0_ci95'][1]:.4f}])"
                                                       if v[k].get("seed0_ci95") else "") for k in v))
        elif key.endswith("within_1pt_of_labels"):
            ci = v.get("gap_ci95")
            ci = f" [95% paired interval {100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci and all(
                math.isfinite(c) for c in ci) else ""
            lines.append(f"- {key}: quality@25% labels {_pct(v['labels'])}, production {_pct(v['production'])}, "
                         f"gap {100 * v['gap']:+.1f} points{ci}: {'PASS' if v['pass'] else 'FAIL'}")
        else:
            miss = "; ".join(f"{n} {e:+.4f} [{lo:+.4f}, {hi:+.4f}]" for n, (e, lo, hi) in v["not_beaten"].items())
            lines.append(f"- {key}: router beats every baseline but the oracle on AIQ with the 95% interval above 0: "
                         + ("PASS" if v["beats_every_baseline_aiq_ci_above_0"] else f"FAIL (not beaten: {miss})"))
    for dataset, conds in results.items():
        for condition, r in conds.items():
            rep = r["report"]
            lines += ["", f"### {dataset}, {condition}", "",
                      f"Relative to `{rep.reference}` on {rep.n_queries} test queries ({rep.unknown_quality_cells} "
                      f"unknown quality cells counted as 0, {rep.excluded_queries} queries excluded).", ""]
            lines += _table(r)
            if len(r["seeds"]) > 1:
                lines += ["", f"Router and ablation over seeds {r['seeds']} (mean ± std):", "",
                          "| policy | quality @10% | quality @25% | cost for 97% quality | AIQ |",
                          "| --- | --- | --- | --- | --- |"]
                for name in r["per_seed"]:
                    s = r["seed_stats"][name]
                    cells = [f"{_pct(s[k][0])} ± {100 * s[k][1]:.1f}" for k in HEADLINE[:3]]
                    lines.append(f"| {name} | {' | '.join(cells)} | {s['aiq'][0]:.4f} ± {s['aiq'][1]:.4f} |")
            if condition == "production" and "production_tasks" in r and "labels" in conds:
                lines += _gap_table(conds["labels"], r)
            if condition == "labels":
                lines += _task_table(r)
                known = "logged" if r["completion_tokens_known"] else (
                    "unknown: the router learns each LLM's cost directly from `cost_usd` (LightGBM on its features), "
                    "so predicted cost = expected logged cost, here the prompt's cost only")
                lines += ["", f"Cost prediction, per LLM (MdAPE = median |predicted − logged| / logged over test "
                          f"queries; completion tokens {known}): " + ", ".join(
                              f"{m} {100 * v:.1f}%" for m, v in r["cost_mdape"].items()) + "."]
            if rep.latency or rep.online:
                md = rep.to_markdown()
                lines += ["", md[md.index("Latency-constrained"):].rstrip() if "Latency-constrained" in md else md]
    timings = {f"{d}/{c}": sum(v for k, v in r["timings"].items() if not k.startswith(" "))
               for d, conds in results.items() for c, r in conds.items()}
    lines += ["", "Wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
              + f"; total {total_s:.0f}.", ""]
    return "\n".join(lines)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _write_section(path: Path, body: str) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- quality:start -->", "<!-- quality:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: markers {start} / {end} not found; the lead owns the file layout")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
