"""Grouped cross-validation on TRAIN splits (RouterBench; `--dataset llmrouter` too): RouterConfig's defaults' records.

Why: every default of the router was chosen by cross-validation on train (never on the test split `bench/quality.py`
reports), and a default is only as credible as a table anyone can rerun. Each experiment is a grid of RouterConfig /
PredictorConfig overrides. For each fold seed the train split's queries are dealt into `--folds` folds grouped by
query (a query's rows for every LLM, and any repeat of its prompt, land in one fold); each fold is held out once while
the real router trains on the others (`MixLLMRouter` stages, nothing re-implemented) and its decisions on the held-out
queries (`choose`, the serving score, over evaluation's willingness-to-pay grid) are pooled over the folds, so every
train query is decided once per fold seed. The pooled decisions are scored by `mixllm.evaluation` (non-decreasing
hull, quality at 25% of the reference's cost, AIQ; relative to gpt-4-1106-preview) twice: with the router's PREDICTED
costs (what it serves) and with the TRUE costs (only the quality model differs). The task prior (per-task means of the
training folds) is scored on the same folds as the reference to beat.

Cost: variants differing only in PredictorConfig share one fitted representation (encoder, tags, PCA) per fold, and
the base encoder's embeddings live in the embedding cache under `--home` (default .mixllm/tune, reused across
experiments and runs). Fine-tuning variants re-encode every fold with their own encoder: those are the slow ones.

Writes bench/results/tune.json (every experiment run so far, per fold seed; rewritten after each fold seed, so an
interrupted run keeps what it finished) and bench/results/tune.md (the tables, mean +- std over fold seeds).
Usage: nice python bench/tune.py --experiment knn_grid [--quick] | --all | --list | --render
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE = "gpt-4-1106-preview"
# dataset -> (catalogue name, train file(s), reference LLM). RouterBench is every experiment's default; the
# representation experiment runs both, so its default is not tuned to one sample (issues 14, 16).
DATASETS = {"routerbench": ("routerbench", "data/routerbench", REFERENCE),
            "llmrouter": ("llmrouter", "data/llmrouter/llmrouter_train.csv.gz", "llama-3.1-nemotron-51b-instruct")}
METRICS = ("quality_at_25pct_cost", "aiq")
SECONDS = ("seconds/representation", "seconds/predictors")  # per fold: what one night of that variant costs
COST_MODES = ("predicted", "true")


@dataclass(frozen=True)
class Variant:
    """One configuration: RouterConfig overrides (PredictorConfig ones nested under "predictor") and what the
    RouterConfig docstring recorded for it before this script existed (quality@25% / AIQ; for comparison only)."""

    label: str
    overrides: dict = field(default_factory=dict)
    record: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    question: str
    variants: tuple[Variant, ...]
    common: dict = field(default_factory=dict)  # overrides shared by every variant
    online: bool = False  # also replay each held-out fold as a stream with feedback (mixllm.replay.online_replay)
    baselines: tuple[str, ...] = ()  # registered task-free baselines scored on the same folds (e.g. "lgbm")


def _knn(k: int, s: float, **extra: Any) -> dict:
    return {"predictor": {"knn_k": k, "knn_smoothing": s}, **extra}


def _lgbm(trees: int, prior: bool = True, **extra: Any) -> dict:
    return {"predictor": {"quality_model": "lgbm", "quality_n_estimators": trees, "tag_prior": prior}, **extra}


def _blend(trees: int, knn_weight: float = 0.5, **extra: Any) -> dict:
    return {"predictor": {"quality_model": "blend", "quality_n_estimators": trees, "blend_knn_weight": knn_weight},
            **extra}


_FORMER = {"representation": "adapter", "untagged": "taxonomy", "task_labels": True}  # the defaults before issue 14
PLAIN = {"epochs": 0}  # the docstring's CV ran on the plain encoder except for the fine-tuning records
EXPERIMENTS = {e.name: e for e in (
    Experiment("quality_model", "Which per-LLM quality model: kNN shrunk to the tag prior, the prior alone, or "
               "LightGBM (boosted from the prior or from scratch)?", (
                   Variant("tag prior alone (kNN, s=1e9)", _knn(150, 1e9), "94.84% / 0.9625"),
                   Variant("LightGBM 10 trees from the prior, head (former default)", _lgbm(10, truncation="head"),
                           "94.83% / 0.9622"),
                   Variant("LightGBM 60 trees from the prior, head", _lgbm(60, truncation="head"),
                           "seed 0: 94.70% / 0.9632"),
                   Variant("LightGBM 200 trees from scratch, head", _lgbm(200, False, truncation="head"),
                           "seed 0: 93.29% / 0.9586"),
                   Variant("LightGBM 10 trees from the prior, tail", _lgbm(10)),
                   Variant("kNN k=150 s=60, tail (default)", {}, "95.11% / 0.9645"),
               ), PLAIN),
    Experiment("knn_grid", "kNN quality: how many neighbours (k) and how many pseudo-rows of the tag prior (s)?", (
        Variant("k=30 s=60", _knn(30, 60), "95.00% / 0.9622"),
        Variant("k=100 s=20", _knn(100, 20), "95.17% / 0.9633"),
        Variant("k=100 s=60", _knn(100, 60), "95.06% / 0.9640"),
        Variant("k=100 s=150", _knn(100, 150), "95.01% / 0.9641"),
        Variant("k=150 s=60 (default)", _knn(150, 60), "95.12% / 0.9646"),
        Variant("k=200 s=40", _knn(200, 40), "95.16% / 0.9644"),
        Variant("k=200 s=60", _knn(200, 60), "95.16% / 0.9644"),
        Variant("k=300 s=60", _knn(300, 60), "94.99% / 0.9634"),
        Variant("k=400 s=60", _knn(400, 60), "94.99% / 0.9637"),
    ), PLAIN),
    Experiment("truncation", "Which end of a long prompt the encoder keeps, and how many tokens?", (
        Variant("head 128, k=100 s=60", _knn(100, 60, truncation="head"), "94.95% / 0.9626"),
        Variant("head 128, k=150 s=60", _knn(150, 60, truncation="head")),
        Variant("tail 128, k=100 s=60", _knn(100, 60), "95.06% / 0.9640"),
        Variant("tail 128, k=150 s=60 (default)", _knn(150, 60), "95.12% / 0.9646"),
        Variant("tail 256, k=200 s=60", _knn(200, 60, max_seq_length=256), "95.14% / 0.9633"),
        Variant("tail 128, k=200 s=60", _knn(200, 60), "95.16% / 0.9644"),
    ), PLAIN),
    Experiment("finetune", "Tag-enhanced fine-tuning of the encoder (domain tags): how many epochs, which rate?", (
        Variant("epochs=0 (plain encoder)", {"epochs": 0}, "95.11% / 0.9646"),
        Variant("epochs=2 lr 3e-5 (former default)", {"epochs": 2, "learning_rate": 3e-5}, "95.03% / 0.9640"),
        Variant("epochs=2 lr 1e-5", {"epochs": 2, "learning_rate": 1e-5}, "95.04% / 0.9644"),
        Variant("epochs=1 lr 1e-5 (default)", {"epochs": 1, "learning_rate": 1e-5}, "95.09% / 0.9646"),
    )),
    Experiment("outcome_tags", "Fine-tuning toward domain + outcome tags (which LLMs answered the query well)?", (
        Variant("domain, epochs=1 lr 1e-5 (default)", {}, "95.09% / 0.9646"),
        Variant("domain+outcome 3 groups, epochs=1 lr 1e-5", {"finetune_tags": "domain+outcome"},
                "seed 0: 95.30% / 0.9652"),
        Variant("domain+outcome 3 groups, epochs=2 lr 3e-5",
                {"finetune_tags": "domain+outcome", "epochs": 2, "learning_rate": 3e-5}, "95.26% / 0.9648"),
    )),
    Experiment("ridge_lambda", "LinUCB prior strength: how much feedback before corrections move decisions? "
               "(utility = quality - cost / wtp during an online replay of each held-out fold)", (
        Variant("lambda=1", {"ridge_lambda": 1.0}, "-> 0.7480 / 0.7810; failing LLM -> 0.714 / 0.731"),
        Variant("lambda=10", {"ridge_lambda": 10.0}, "-> 0.7884 / 0.7966"),
        Variant("lambda=30 (default)", {"ridge_lambda": 30.0}, "frozen 0.7916 / 0.8010 -> 0.7943 / 0.8062; "
                "failing LLM frozen 0.089 / 0.385 -> 0.741 / 0.766"),
        Variant("lambda=100", {"ridge_lambda": 100.0}, "-> 0.7926 / 0.7952"),
    ), PLAIN, online=True),
    Experiment("representation", "How do embeddings become tag-enhanced: fine-tuning MiniLM (each night re-encodes "
               "every prompt), a learned adapter over frozen, cached MiniLM embeddings (a night encodes only new "
               "prompts), or not at all (plain MiniLM)? Seconds: a fold's representation stage (tags, fine-tuning or "
               "adapter, encoding the fold's train and held-out prompts; base embeddings already cached, as after "
               "any earlier night) and its predictors.", (
        Variant("plain MiniLM", {"representation": "plain"}),
        Variant("finetune 1 epoch lr 1e-5 (former default)", {"representation": "finetune"}),
        Variant("adapter 10 epochs", {"representation": "adapter"}),
        Variant("adapter 3 epochs", {"representation": "adapter", "adapter_epochs": 3}),
    )),
    Experiment("defaults", "Issue 14: the defaults across both datasets and both conditions (labels: tags = the "
               "log's tasks, held-out queries told theirs; production: no task column, tags from the router's own "
               "tagger). Is the task label used at prediction, which tagger for unlabelled logs, tag-enhanced "
               "(adapter) or plain MiniLM, how much shrinkage to the tag prior?", (
        Variant("defaults: adapter, task labels used, taxonomy tagger, k=150 s=60", _FORMER),
        Variant("task labels ignored at prediction (former)", {**_FORMER, "task_labels": False}),
        Variant("plain MiniLM", {**_FORMER, "representation": "plain"}),
        Variant("untagged: 30 k-means clusters", {**_FORMER, "untagged": "clusters", "tag_clusters": 30}),
        Variant("untagged: 30 clusters, plain MiniLM", {**_FORMER, "untagged": "clusters", "tag_clusters": 30,
                                                        "representation": "plain"}),
        Variant("k=150 s=200", _knn(150, 200, **_FORMER)),
    )),
    Experiment("quality_blend", "Issue 14, both datasets x both conditions: which quality model, against the "
               "LightGBM-on-MiniLM baseline (scored on the same folds)? kNN shrunk to the tag prior (default), "
               "LightGBM trees boosted from the tag prior on the router's features (PCA of the embedding, "
               "similarity to every tag centroid: the tags as soft features, log prompt tokens), or their blend; "
               "and, for logs without labels, how many k-means clusters.", (
        Variant("kNN k=150 s=60 (default)", {}),
        Variant("LightGBM 100 trees from the prior", _lgbm(100)),
        Variant("LightGBM 300 trees from the prior", _lgbm(300)),
        Variant("blend kNN 0.5 + LightGBM 100", _blend(100)),
        Variant("blend kNN 0.5 + LightGBM 300", _blend(300)),
        Variant("blend kNN 0.25 + LightGBM 300", _blend(300, 0.25)),
        Variant("blend kNN 0.75 + LightGBM 300", _blend(300, 0.75)),
        Variant("blend kNN 0.5 + LightGBM 300, 60 clusters", _blend(300, tag_clusters=60)),
        Variant("kNN, 60 clusters", {"tag_clusters": 60}),
    ), baselines=("lgbm",)),
    Experiment("knn_both", "Issue 14: kNN neighbours (k) and prior pseudo-rows (s) on both datasets x both "
               "conditions (knn_grid ran on RouterBench only). Why ask: LLMRouter's small tasks (human_eval, "
               "agentverse, commongen: ~150-200 train queries each) have fewer rows in their tag than k=150, so "
               "their estimate is the tag mean with no local signal.", (
        Variant("k=150 s=60 (default)", _knn(150, 60)),
        Variant("k=100 s=60", _knn(100, 60)),
        Variant("k=50 s=60", _knn(50, 60)),
        Variant("k=50 s=20", _knn(50, 20)),
        Variant("k=30 s=20", _knn(30, 20)),
        Variant("k=20 s=10", _knn(20, 10)),
    )),
    Experiment("tagger", "Issue 14, production condition (no task column): how to tag an unlabelled log? k-means "
               "over the embeddings (30 clusters, the default), or outcome-aware clusters of the embedding plus "
               "surface features of the prompt (casing, trailing '?', digits, length, code words...; "
               "tagging.SurfaceClusterTagger) whose number (4-48) the log's own outcomes choose by inner CV; surface "
               "weight 0 = embeddings only with the chosen count.", (
        Variant("k-means 30 clusters (default)", {}),
        Variant("surface w0.5, count chosen by outcomes", {"untagged": "surface"}),
        Variant("surface w0.25, count chosen by outcomes", {"untagged": "surface", "tag_surface_weight": 0.25}),
        Variant("embedding only (w0), count chosen by outcomes", {"untagged": "surface", "tag_surface_weight": 0.0}),
    )),
)}
BASELINE_LABELS = {"lgbm": "LightGBM baseline (plain MiniLM, head 128)", "knn": "KNN-20 baseline"}


# ------------------------------------------------------------------------------------------- folds ------------
def grouped_folds(query_ids: Any, prompts: Any, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per item; items sharing a query_id OR a prompt are one group and land in one fold.

    Why both keys: a prompt repeated under another id would otherwise be its own nearest neighbour in the kNN
    quality model's memory (a leak). Groups are shuffled by `seed` and dealt round-robin, so folds differ in size
    by at most one group."""
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    q_codes, q_names = pd.factorize(pd.Series(query_ids, dtype=object).astype(str))
    p_codes, _ = pd.factorize(pd.Series(prompts, dtype=object).astype(str))
    parent = np.arange(len(q_names) + p_codes.max() + 1)  # nodes: query ids, then prompts

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for q, p in set(zip(q_codes.tolist(), (p_codes + len(q_names)).tolist())):
        parent[root(q)] = root(p)
    group = np.array([root(q) for q in q_codes])
    unique = np.unique(group)
    if len(unique) < n_folds:
        raise ValueError(f"{len(unique)} query groups cannot fill {n_folds} folds")
    rank = np.empty(len(unique), int)
    rank[np.random.default_rng(seed).permutation(len(unique))] = np.arange(len(unique))
    return (rank % n_folds)[np.searchsorted(unique, group)]


def _subset(test: Any, rows: np.ndarray) -> Any:
    """The TestSet restricted to some queries (every per-query field sliced)."""
    return dataclasses.replace(test, query_ids=test.query_ids[rows], prompts=[test.prompts[i] for i in rows],
                               tasks=test.tasks[rows], prompt_tokens=test.prompt_tokens[rows],
                               quality=test.quality[rows], cost=test.cost[rows],
                               completion_tokens=test.completion_tokens[rows], excluded=0, imputed=0)


def _limit(log: pd.DataFrame, max_queries: int | None) -> pd.DataFrame:
    """The first `max_queries` queries, spread evenly over tasks (a smoke-run subset); all of them when None."""
    if not max_queries:
        return log
    first = log.drop_duplicates("query_id")
    per_task = max(1, max_queries // first["task"].nunique())
    keep = first.groupby("task").head(per_task)["query_id"]
    return log[log["query_id"].isin(keep)].reset_index(drop=True)


# ------------------------------------------------------------------------------------------- one fold seed ----
def config_of(experiment: Experiment, variant: Variant, home: Path) -> Any:
    from mixllm.router import RouterConfig

    merged = {"seed": 0, "progress": False, "cache_dir": home / "embeddings"}
    for part in (experiment.common, variant.overrides):
        for key, value in part.items():
            merged[key] = {**merged.get(key, {}), **value} if key == "predictor" else value
    return RouterConfig.model_validate(merged)


def _representation_key(cfg: Any) -> str:
    """Configs equal up to their PredictorConfig share one fitted encoder / tags / PCA per fold."""
    from mixllm.predictors import PredictorConfig

    return cfg.model_copy(update={"predictor": PredictorConfig(), "task_labels": True}).model_dump_json()


_LENGTH_FIELDS = {"n_estimators", "learning_rate", "num_leaves", "min_child_samples", "feature_fraction",
                  "bagging_fraction", "lambda_l2", "min_rows"}  # all a length (cost) model depends on, with the seed


def _with_predictors(base: Any, prepared: Any, cfg: Any, lengths: dict | None = None) -> Any:
    """A router that shares `base`'s fitted representation and trains its own predictors from `cfg` (the stages
    `MixLLMRouter.fit` runs: fit_representation -> fit_llm per LLM -> finish).

    `lengths` (a dict kept per fold and representation): variants whose length-model settings match reuse the
    first one's LightGBM length models instead of training the same 200 trees again (only quality models differ
    in the predictor grids; the test checks the result equals a router fitted alone)."""
    from mixllm.predictors import PredictorBank

    router = copy.copy(base)
    router.bandit = copy.deepcopy(base.bandit)
    router.manifest = {}
    key = json.dumps([cfg.seed, cfg.predictor.model_dump(include=_LENGTH_FIELDS)], sort_keys=True)
    reuse = lengths is not None and key in lengths and cfg.predictor.quality_n_estimators is not None
    # Reused: train with a 1-tree length model (cheap), then put the shared one in its place.
    router.config = cfg.model_copy(update={"predictor": cfg.predictor.model_copy(update={"n_estimators": 1})}) \
        if reuse else cfg
    fitted = [router.fit_llm(name, prepared) for name in prepared.names]
    if reuse:
        fitted = [dataclasses.replace(p, length=lengths[key][p.name]) for p in fitted]
    elif lengths is not None:
        lengths[key] = {p.name: p.length for p in fitted}
    router.config = cfg
    router.predictors = PredictorBank(cfg.predictor, seed=cfg.seed)
    return router.finish(prepared, fitted)


def _decide(router: Any, pred: Any, held: Any, wtps: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sweep params, {cost mode: choices [sweep point, held-out query]}): the router's own sweep (`Router.sweep`,
    its greedy `choose`) with its predicted costs, and with the true costs in their place; choices index the test
    set's models."""
    cols = np.array([held.models.index(m) for m in pred.models] + [-1])
    true = dataclasses.replace(pred, cost=held.cost[:, cols[:-1]])
    out = {}
    for mode, p in (("predicted", pred), ("true", true)):
        params, choices = router.sweep(p, wtps)
        out[mode] = cols[np.asarray(choices, dtype=int)]
    return np.asarray(params, float), out


def run_fold_seed(experiment: Experiment, log: pd.DataFrame, test: Any, n_folds: int, fold_seed: int,
                  home: Path, dataset: str = "routerbench", condition: str = "labels") -> dict[str, dict[str, float]]:
    """{variant label (and "task prior"): {metric/cost mode: value, seconds per fold}} from pooled out-of-fold
    decisions. condition "labels": the router trains on the log's tasks and is told the held-out queries' tasks;
    "production": the task column is removed from the training folds (the router's own tagger decides the tags)
    and nothing is told at prediction. The task prior always uses the labels: a reference, not a rival."""
    from mixllm.catalogue import estimate_tokens, load_catalogue
    from mixllm.evaluation import default_wtps, policy_result
    from mixllm.router import MixLLMRouter
    from mixllm.routers.baselines import KNNRouter, LGBMRouter, TaskPriorRouter

    wtps = default_wtps()
    row_fold = grouped_folds(log["query_id"], log["prompt"], n_folds, fold_seed)
    fold_of = dict(zip(log["query_id"].astype(str), row_fold))
    query_fold = np.array([fold_of[q] for q in test.query_ids])
    configs = {v.label: config_of(experiment, v, home) for v in experiment.variants}
    groups: dict[str, list[str]] = {}
    for label, cfg in configs.items():
        groups.setdefault(_representation_key(cfg), []).append(label)
    pooled: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    streams: dict[str, dict[str, float]] = {}  # online experiments: query-weighted utility sums over folds
    seconds: dict[str, dict[str, float]] = {}  # label -> stage -> seconds summed over folds
    catalogue_name, _, reference = DATASETS[dataset]
    catalogue = load_catalogue(catalogue_name)

    def pool(label: str, rows: np.ndarray, params: np.ndarray, choices: dict[str, np.ndarray]) -> None:
        _, full = pooled.setdefault(label, (params, {m: np.full((len(params), test.n), -1) for m in choices}))
        for mode, ch in choices.items():
            full[mode][:, rows] = ch

    for fold in range(n_folds):
        rows = np.nonzero(query_fold == fold)[0]
        held, fold_log = _subset(test, rows), log[row_fold != fold].reset_index(drop=True)
        router_log = fold_log if condition == "labels" else fold_log.assign(task=None)
        told = [str(t) for t in held.tasks] if condition == "labels" else None
        tokens = np.array([t if np.isfinite(t) else estimate_tokens(p) for t, p in zip(held.prompt_tokens,
                                                                                      held.prompts)], float)
        for labels in groups.values():
            t0 = time.perf_counter()
            base = MixLLMRouter(configs[labels[0]], catalogue)
            prepared = base.fit_representation(router_log)
            emb, lengths = base.embed(held.prompts, base._cache()), {}
            spent = time.perf_counter() - t0
            for label in labels:
                t0 = time.perf_counter()
                router = _with_predictors(base, prepared, configs[label], lengths)
                took = seconds.setdefault(label, dict.fromkeys(SECONDS, 0.0))
                took["seconds/representation"] += spent
                took["seconds/predictors"] += time.perf_counter() - t0
                pred = router._predict_emb(emb, tokens, told, held.prompts)
                params, choices = _decide(router, pred, held, wtps)
                pool(label, rows, params, choices)
                if experiment.online:
                    _replay(router, pred, held, params, choices["predicted"], fold_seed, streams.setdefault(label, {}))
        prior = TaskPriorRouter().fit(fold_log)
        pred = prior.predict(held.prompts, tokens.tolist(), tasks=[str(t) for t in held.tasks])
        pool("task prior", rows, *_decide(prior, pred, held, wtps))
        for name in experiment.baselines:  # task-free: the same in both conditions
            rival = {"lgbm": LGBMRouter, "knn": KNNRouter}[name](seed=0, catalogue=catalogue).fit(fold_log)
            pred = rival.predict(held.prompts, tokens.tolist())
            pool(BASELINE_LABELS[name], rows, *_decide(rival, pred, held, wtps))
    ref = test.models.index(reference) if reference in test.models else int(np.argmax(test.cost.mean(axis=0)))
    out: dict[str, dict[str, float]] = {}
    for label, (params, choices) in pooled.items():
        for mode, ch in choices.items():
            m = policy_result(test, label, "policy", "", params, ch, ref).metrics
            out.setdefault(label, {}).update({f"{k}/{mode}": float(m[k]) for k in METRICS})
    for label, sums in streams.items():
        out[label].update({k: v / test.n for k, v in sums.items()})
    for label, took in seconds.items():
        out[label].update({k: v / n_folds for k, v in took.items()})
    return out


def _replay(router: Any, pred: Any, held: Any, params: np.ndarray, choices: np.ndarray, seed: int,
            sums: dict[str, float]) -> None:
    """Add one held-out fold's online replay (frozen / refined / thumbs feedback, stationary and with the most
    used LLM failing; mixllm.replay) to `sums`, weighted by its queries: utilities at the sweep points nearest 10%
    and 25% of the reference's cost on this fold."""
    from mixllm.evaluation import policy_result
    from mixllm.replay import OnlineConfig, online_replay

    ref = held.models.index(REFERENCE) if REFERENCE in held.models else int(np.argmax(held.cost.mean(axis=0)))
    sweep = policy_result(held, "router", "router", "", params, choices, ref)
    replay = online_replay(router, held, OnlineConfig(seed=seed), ref, pred=pred, sweep=sweep)
    for scenario, levels in replay["scenarios"].items():
        for level, row in levels.items():
            for mode in ("frozen", "refined", "thumbs"):
                key = f"utility/{scenario}/{level}/{mode}"
                sums[key] = sums.get(key, 0.0) + row[mode]["utility"] * held.n


# ------------------------------------------------------------------------------------------- results ----------
def _mean_std(values: list[float]) -> list[float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return [math.nan, math.nan]
    return [statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.node()}: {cpu}, {cores} cores, Python {platform.python_version()}"


def summarise(experiment: Experiment, per_seed: dict[str, list[dict[str, float]]], meta: dict) -> dict:
    labels = [v.label for v in experiment.variants] + ["task prior"] + \
        [BASELINE_LABELS[n] for n in experiment.baselines]
    records = {v.label: v.record for v in experiment.variants}
    rows = []
    for label in labels:
        seeds = per_seed[label]
        stats = {key: _mean_std([s[key] for s in seeds]) for key in seeds[0]}
        overrides = next((v.overrides for v in experiment.variants if v.label == label), None)
        rows.append({"label": label, "overrides": overrides, "docstring_record": records.get(label, ""),
                     "per_seed": seeds, "mean_std": stats})
    return {"question": experiment.question, "common_overrides": experiment.common, "online": experiment.online,
            **meta, "variants": rows}


def _pct(pair: list[float]) -> str:
    mean, std = pair
    return "-" if not math.isfinite(mean) else f"{100 * mean:.2f}% ± {100 * std:.2f}"


def _aiq(pair: list[float]) -> str:
    mean, std = pair
    return "-" if not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


NOT_REPRODUCED = (
    "Not rerun here: records of RouterConfig's former docstring (git history of mixllm/router.py up to commit "
    "9612d12) whose variants are not configuration options, so no grid of overrides can express them (all tied with "
    "or lost to the kept defaults there): similarity-weighted kNN, kNN in a PCA space, cost from the neighbours' "
    "completion tokens, LightGBM or logistic models stacked on kNN estimates or Winogrande-twin features, per-tag k "
    "or s.")


def markdown(results: dict) -> str:
    lines = ["# Cross-validation on the train split (`bench/tune.py`)", "",
             "Written by `bench/tune.py`; do not edit by hand. Pooled out-of-fold decisions of the real router, "
             "folds grouped by query, TRAIN split only (RouterBench sample unless a section names another "
             f"dataset); quality@25% cost / AIQ relative to `{REFERENCE}` (LLMRouter: `{DATASETS['llmrouter'][2]}`) "
             "from `mixllm.evaluation`, mean ± std over fold seeds. *Predicted cost*: the router's "
             "own decisions; *true cost*: its predicted quality with the logged costs (only the quality model "
             "differs). *Docstring record*: what RouterConfig's docstring said before this script (means over fold "
             "seeds 0-2 unless marked), for comparison; its folds were drawn differently.", ""]
    missing = [n for n in EXPERIMENTS if not any(k == n or k.startswith(f"{n} (") for k in results)]
    if missing:
        lines += ["Defined but not run into this file yet: " + ", ".join(f"`{n}`" for n in missing)
                  + " (`nice python bench/tune.py --experiment NAME`).", ""]
    lines += [NOT_REPRODUCED, ""]
    for name, r in results.items():
        lines += [f"## {name}", "", r["question"], "",
                  f"`{r['command']}` — {r['date']}, {r['machine']}; {r['folds']} folds, fold seeds "
                  f"{r['fold_seeds']}{' (QUICK run: fewer fold seeds)' if r.get('quick') else ''}; "
                  f"{r['n_queries']} train queries; shared overrides {json.dumps(r['common_overrides'])}; "
                  f"{r['seconds']:.0f} s; dataset {r.get('dataset', 'routerbench')}, condition "
                  f"{r.get('condition', 'labels')}, reference "
                  f"`{r.get('reference', REFERENCE)}`.", ""]
        if r.get("adapter_latency"):
            a = r["adapter_latency"]
            lines += [f"Adapter at inference (numpy, `{a['command']}`, {a['date']}): {a['one_query_ms']:.3f} ms per "
                      f"query alone, {a['batch64_ms']:.3f} ms per batch of 64 (median of {a['repeats']} calls), "
                      f"beside {a['encoder_one_query_ms']:.1f} ms for MiniLM encoding one query in the same run "
                      f"(load average {a.get('load_average', math.nan):.1f} on the shared machine).", ""]
        if r.get("online"):
            lines += _online_table(r) + [""]
            continue
        if r.get("kind") == "repeats":
            lines += _repeats_table(r) + [""]
            continue
        if r.get("kind") == "taggers":
            lines += _taggers_table(r) + [""]
            continue
        timed = any(SECONDS[0] in v["mean_std"] for v in r["variants"])
        lines += ["| variant | quality@25% (predicted cost) | AIQ (predicted cost) | AIQ per fold seed | "
                  "quality@25% (true cost) | AIQ (true cost) | " + ("representation s / fold | predictors s / fold | "
                                                                     if timed else "") + "docstring record |",
                  "| --- | --- | --- | --- | --- | --- | " + ("--- | --- | " if timed else "") + "--- |"]
        for v in r["variants"]:
            s = v["mean_std"]
            seeds = " ".join(f"{x['aiq/predicted']:.4f}" for x in v["per_seed"])
            secs = "".join(f"{s[k][0]:.1f} | " if k in s else "- | " for k in SECONDS) if timed else ""
            lines.append(f"| {v['label']} | {_pct(s['quality_at_25pct_cost/predicted'])} | "
                         f"{_aiq(s['aiq/predicted'])} | {seeds} | {_pct(s['quality_at_25pct_cost/true'])} | "
                         f"{_aiq(s['aiq/true'])} | {secs}{v['docstring_record'] or '-'} |")
        lines.append("")
    return "\n".join(lines)


def _online_table(r: dict) -> list[str]:
    """Mean utility over fold seeds at the ~10% / ~25% cost points: frozen -> refined feedback (thumbs)."""
    lines = ["Utility (quality - cost / wtp, mean over the replayed stream) at the sweep points nearest 10% / 25% "
             "relative cost: frozen router -> learning from refined feedback (thumbs only).", "",
             "| variant | stationary ~10% | stationary ~25% | most-used LLM fails ~10% | ~25% | docstring record |",
             "| --- | --- | --- | --- | --- | --- |"]
    for v in r["variants"]:
        s = v["mean_std"]
        if "utility/stationary/10pct/frozen" not in s:
            continue
        cells = [f"{s[f'utility/{sc}/{lvl}/frozen'][0]:.4f} -> {s[f'utility/{sc}/{lvl}/refined'][0]:.4f} "
                 f"({s[f'utility/{sc}/{lvl}/thumbs'][0]:.4f})" for sc in ("stationary", "drift")
                 for lvl in ("10pct", "25pct")]
        lines.append(f"| {v['label']} | {' | '.join(cells)} | {v['docstring_record'] or '-'} |")
    return lines


def _clean(x: Any) -> Any:
    from mixllm.evaluation import _clean as clean

    return clean(x)


def write_results(out: Path, name: str, summary: dict) -> None:
    """Merge one experiment into tune.json (others kept as they were) and regenerate tune.md from it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tune.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results[name] = _clean(summary)
    results = {n: results[n] for n in [*EXPERIMENTS, *sorted(set(results) - set(EXPERIMENTS))] if n in results}
    path.write_text(json.dumps(results, indent=1, allow_nan=False), encoding="utf-8")
    (out / "tune.md").write_text(markdown(_nan(results)), encoding="utf-8")


def _nan(x: Any) -> Any:
    """JSON nulls (unreachable figures) back to NaN for the table."""
    if isinstance(x, dict):
        return {k: _nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan(v) for v in x]
    return math.nan if x is None else x


def section(name: str, dataset: str, condition: str) -> str:
    """The results key: the experiment's name (RouterBench with labels, the former records), else with its data."""
    if dataset == "routerbench" and condition == "labels":
        return name
    return f"{name} ({dataset})" if condition == "labels" else f"{name} ({dataset}, {condition})"


def run(experiment: Experiment, log: pd.DataFrame, fold_seeds: list[int], n_folds: int, home: Path,
        out: Path | None, command: str, quick: bool, dataset: str = "routerbench", condition: str = "labels") -> dict:
    """Every fold seed of one experiment; results written after each seed (when `out` is given), under
    `section(name, dataset, condition)`."""
    from mixllm.testset import TestSet

    test = TestSet.from_log(log)
    per_seed: dict[str, list[dict[str, float]]] = {}
    t0, summary = time.perf_counter(), {}
    for i, seed in enumerate(fold_seeds):
        for label, figures in run_fold_seed(experiment, log, test, n_folds, seed, home, dataset, condition).items():
            per_seed.setdefault(label, []).append(figures)
        meta = {"command": command, "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                "machine": _machine(), "folds": n_folds, "fold_seeds": fold_seeds[: i + 1], "quick": quick,
                "n_queries": test.n, "seconds": time.perf_counter() - t0, "dataset": dataset,
                "reference": DATASETS[dataset][2], "condition": condition}
        summary = summarise(experiment, per_seed, meta)
        print(f"{experiment.name} fold seed {seed}: " + ", ".join(
            f"{v['label']} AIQ {v['per_seed'][-1]['aiq/predicted']:.4f}" for v in summary["variants"])
            + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        if out is not None:
            write_results(out, section(experiment.name, dataset, condition), summary)
    return summary


def adapter_latency(log: pd.DataFrame, home: Path, command: str, repeats: int = 1000) -> dict:
    """Median wall ms of the tag adapter's numpy transform (one query; a batch of 64) beside one MiniLM forward
    pass, with an adapter fitted by the router's defaults on the cached base embeddings of `log`."""
    from mixllm.adapter import TagAdapter
    from mixllm.embeddings import EmbeddingCache, QueryEncoder
    from mixllm.router import RouterConfig

    cfg = RouterConfig()
    enc = QueryEncoder.base(cfg.max_seq_length, cfg.truncation)
    queries = log.drop_duplicates("query_id")
    emb = enc.encode(queries["prompt"].tolist(), EmbeddingCache(home / "embeddings" / "cache.sqlite"))
    adapter = TagAdapter(hidden=cfg.adapter_hidden, epochs=cfg.adapter_epochs, lr=cfg.adapter_lr,
                         temperature=cfg.temperature, seed=cfg.seed).fit(emb, queries["task"].astype(str).tolist())

    def median_ms(fn: Any, n: int) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    prompt = queries["prompt"].iloc[0]
    return {"command": command, "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "repeats": repeats,
            "one_query_ms": median_ms(lambda: adapter.transform(emb[:1]), repeats),
            "batch64_ms": median_ms(lambda: adapter.transform(emb[:64]), repeats),
            "encoder_one_query_ms": median_ms(lambda: enc.encode([prompt]), 50), "load_average": os.getloadavg()[0]}


REPEAT_SIMILARITY = (0.95, 0.99, 0.999)  # cosine of the held-out query to its nearest train query
REPEAT_WEIGHT = (0.25, 0.5, 1.0)  # weight of that neighbour's observed outcomes in the estimate


def repeats(dataset: str, log: pd.DataFrame, fold_seeds: list[int], n_folds: int, home: Path, command: str) -> dict:
    """Would a repeat-aware memory help? For each held-out query whose nearest train query is a (near-)duplicate
    (cosine >= tau), its estimate becomes (1 - w) x the router's kNN estimate + w x that neighbour's observed
    outcomes; pooled decisions with true costs scored as every table (labels condition; the kNN estimate is the
    library's miniature, `mixllm.tagging.cluster_knn`, within the task). Why this CV: train splits have no exact
    repeats, so the folds cannot reward an exact-match memory; near-duplicates are the repeats train does hold.
    Folds stay grouped (identical prompts would be the only other repeats; there are none)."""
    from mixllm.embeddings import EmbeddingCache, QueryEncoder
    from mixllm.evaluation import default_wtps, policy_result
    from mixllm.router import RouterConfig
    from mixllm.tagging import cluster_knn
    from mixllm.testset import TestSet

    cfg, wtps, t0 = RouterConfig(), default_wtps(), time.perf_counter()
    test = TestSet.from_log(log)
    emb = QueryEncoder.base(cfg.max_seq_length, cfg.truncation).encode(
        test.prompts, EmbeddingCache(home / "embeddings" / "cache.sqlite"))
    tasks, y = test.tasks.astype(str), test.quality
    ref = test.models.index(DATASETS[dataset][2])
    exact = int(pd.Series(test.prompts).duplicated().sum())
    variants: dict[str, list[dict[str, float]]] = {}
    for seed in fold_seeds:
        fold = grouped_folds(test.query_ids, test.prompts, n_folds, seed)
        base, top, near = np.zeros_like(y), np.zeros(test.n), np.zeros_like(y)
        for f in range(n_folds):
            tr, te = np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]
            base[te] = cluster_knn(emb[tr], y[tr], tasks[tr], emb[te], tasks[te], cfg.predictor.knn_k,
                                   cfg.predictor.knn_smoothing)
            sims = emb[te] @ emb[tr].T
            top[te], near[te] = sims.max(1), y[tr][sims.argmax(1)]

        def score(q: np.ndarray) -> dict[str, float]:
            choices = np.array([np.argmax(q - test.cost / w, axis=1) for w in wtps])
            m = policy_result(test, "x", "policy", "", wtps, choices, ref).metrics
            return {k: float(m[k]) for k in METRICS}

        variants.setdefault("kNN alone (default)", []).append({**score(base), "queries": test.n})
        for tau in REPEAT_SIMILARITY:
            sel = top >= tau
            for w in REPEAT_WEIGHT:
                q = base.copy()
                q[sel] = (1 - w) * base[sel] + w * near[sel]
                err = float(np.mean((q[sel] - y[sel]) ** 2)) if sel.any() else math.nan
                variants.setdefault(f"cos >= {tau}, w {w}", []).append(
                    {**score(q), "queries": int(sel.sum()), "mse_repeats": err,
                     "mse_repeats_knn": float(np.mean((base[sel] - y[sel]) ** 2)) if sel.any() else math.nan})
    return {"kind": "repeats", "common_overrides": {}, "question": "Repeat-aware memory: does weighing a "
            "(near-)duplicate train query's observed outcomes help, and does it hurt where the duplicates are not "
            "repeats?", "command": command,
            "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": _machine(), "folds": n_folds,
            "fold_seeds": fold_seeds, "n_queries": test.n, "exact_repeats_in_train": exact, "dataset": dataset,
            "reference": DATASETS[dataset][2], "seconds": time.perf_counter() - t0,
            "variants": [{"label": k, "mean_std": {m: _mean_std([s[m] for s in v]) for m in v[0]}}
                         for k, v in variants.items()]}


TAGGER_VARIANTS = {  # label -> SurfaceClusterTagger overrides (None: the log's task labels)
    "labels, told (reference)": None,
    "labels, nearest task centroid": "nearest",
    "surface w0.5, grid 4-48 (default)": {},
    "surface w0.5, grid 4-96": {"grid": (4, 8, 16, 32, 48, 64, 96)},
    "surface w0.5 + joint splits": {"splits": "joint"},
    "surface w0.5 + outcome splits": {"splits": "outcomes"},
    "surface w0.5 + outcome splits, gain 0.002": {"splits": "outcomes", "split_gain": 0.002},
}


def balanced_metrics(test: Any, choices: np.ndarray, ref: int, rows: np.ndarray | None = None) -> dict[str, float]:
    """Frontier metrics with every task weighted equally (as LLMRouter's test split weighs its tasks: 50 queries
    each, while train holds them in proportions from 2.7% to 8.9%), over `rows` (default all)."""
    from mixllm.evaluation import frontier_metrics
    from mixllm.stats import per_query_outcomes

    rows = np.arange(test.n) if rows is None else rows
    tasks = test.tasks[rows].astype(str)
    names, inv = np.unique(tasks, return_inverse=True)
    w = np.zeros(test.n)
    w[rows] = 1.0 / (len(names) * np.bincount(inv)[inv])
    c, q = per_query_outcomes(test.cost, test.quality, choices)
    rc, rq = w @ test.cost[:, ref], w @ test.quality[:, ref]
    m = frontier_metrics((c @ w) / rc, (q @ w) / rq, (w @ test.cost).min() / rc)
    return {k: float(m[k]) for k in METRICS}


def taggers(dataset: str, log: pd.DataFrame, fold_seeds: list[int], n_folds: int, home: Path, command: str,
            quick: bool = False) -> dict:
    """How much of production's gap to labels is the tagging? The library's miniature of the router's quality
    model (`mixllm.tagging.cluster_knn`: kNN within the tag, shrunk to the tag mean) on base MiniLM embeddings,
    with each way of tagging: the log's task labels told at prediction (the labels condition), the labels at
    training but each held-out query sent to its nearest task centroid (what a router without labels at
    prediction could at best do with perfect training tags), and the surface tagger (production's default) with
    finer grids or with clusters split while the out-of-fold error falls (`tagging.split_clusters`). Pooled
    out-of-fold decisions with TRUE costs, scored on train's task mix and with every task weighted equally (the
    LLMRouter test split's weighting); MSE of the estimates; clusters chosen."""
    from mixllm.embeddings import EmbeddingCache, QueryEncoder
    from mixllm.evaluation import default_wtps, policy_result
    from mixllm.router import RouterConfig
    from mixllm.tagging import SurfaceClusterTagger, cluster_knn, nearest_task
    from mixllm.testset import TestSet

    cfg, wtps, t0 = RouterConfig(), default_wtps(), time.perf_counter()
    test = TestSet.from_log(log)
    emb = QueryEncoder.base(cfg.max_seq_length, cfg.truncation).encode(
        test.prompts, EmbeddingCache(home / "embeddings" / "cache.sqlite")).astype(np.float64)
    tasks, y = test.tasks.astype(str), test.quality
    ref = test.models.index(DATASETS[dataset][2])
    k, sm = cfg.predictor.knn_k, cfg.predictor.knn_smoothing
    variants: dict[str, list[dict[str, float]]] = {}
    for seed in fold_seeds:
        fold = grouped_folds(test.query_ids, test.prompts, n_folds, seed)
        for label, over in TAGGER_VARIANTS.items():
            est, clusters, secs = np.zeros_like(y), [], 0.0
            for f in range(n_folds):
                tr, te = np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]
                t1 = time.perf_counter()
                if over is None:
                    tag_tr, tag_te = tasks[tr], tasks[te]
                elif over == "nearest":
                    tag_tr = tasks[tr]
                    tag_te = np.array(nearest_task(list(tag_tr) + [None] * len(te), np.vstack([emb[tr], emb[te]]),
                                                   range(len(tr), len(tr) + len(te))))
                else:
                    tagger = SurfaceClusterTagger(weight=cfg.tag_surface_weight, seed=0, k=k, smoothing=sm,
                                                  **({"grid": cfg.tag_cluster_grid} | over))
                    tagger.fit([test.prompts[i] for i in tr], emb[tr], y[tr])
                    tag_tr = np.array(tagger.assign(emb[tr], [test.prompts[i] for i in tr]))
                    tag_te = np.array(tagger.assign(emb[te], [test.prompts[i] for i in te]))
                secs += time.perf_counter() - t1
                clusters.append(len(set(tag_tr)))
                est[te] = cluster_knn(emb[tr], y[tr], tag_tr, emb[te], tag_te, k, sm)
            choices = np.array([np.argmax(est - test.cost / w, axis=1) for w in wtps])
            m = policy_result(test, label, "policy", "", wtps, choices, ref).metrics
            bal = balanced_metrics(test, choices, ref)
            known = ~np.isnan(y)
            variants.setdefault(label, []).append(
                {**{f"{x}/true": float(m[x]) for x in METRICS}, **{f"{x}/balanced": v for x, v in bal.items()},
                 "mse": float(((est - y)[known] ** 2).mean()), "clusters": float(np.mean(clusters)),
                 "seconds/tagger": secs / n_folds})
            print(f"{dataset} fold seed {seed} {label}: AIQ {m['aiq']:.4f}, balanced {bal['aiq']:.4f}, "
                  f"clusters {np.mean(clusters):.1f}", flush=True)
    return {"kind": "taggers", "common_overrides": {}, "question": "Issue 14: how much of the production "
            "condition's gap to labels is the tagging, and do finer or outcome-split surface clusters close it? "
            "(the router's quality model in miniature on base MiniLM embeddings, true costs)", "command": command,
            "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": _machine(), "folds": n_folds,
            "fold_seeds": fold_seeds, "quick": quick, "n_queries": test.n, "dataset": dataset, "condition": "production",
            "reference": DATASETS[dataset][2], "seconds": time.perf_counter() - t0,
            "variants": [{"label": lab, "mean_std": {x: _mean_std([s[x] for s in v]) for x in v[0]}}
                         for lab, v in variants.items()]}


def _taggers_table(r: dict) -> list[str]:
    lines = ["Pooled out-of-fold decisions with true costs: on train's task mix, and with every task weighted "
             "equally (as the LLMRouter test split). MSE: the estimates' squared error on known cells; clusters: "
             "tags in the training folds (mean); seconds: tagger fit + assignment per fold.", "",
             "| variant | quality@25% | AIQ | quality@25% (tasks equal) | AIQ (tasks equal) | MSE | clusters | "
             "tagger s / fold |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in r["variants"]:
        s = v["mean_std"]
        lines.append(f"| {v['label']} | {_pct(s['quality_at_25pct_cost/true'])} | {_aiq(s['aiq/true'])} | "
                     f"{_pct(s['quality_at_25pct_cost/balanced'])} | {_aiq(s['aiq/balanced'])} | "
                     f"{s['mse'][0]:.4f} | {s['clusters'][0]:.1f} | {s['seconds/tagger'][0]:.1f} |")
    return lines


def _repeats_table(r: dict) -> list[str]:
    lines = [f"Exact repeats among the {r['n_queries']} train queries: {r['exact_repeats_in_train']}. Held-out "
             "queries with such a neighbour, squared error of their estimate (memory mix vs kNN alone), pooled "
             "quality@25% / AIQ with true costs:", "",
             "| variant | held-out queries affected | MSE on them: mix / kNN | quality@25% | AIQ |",
             "| --- | --- | --- | --- | --- |"]
    for v in r["variants"]:
        s = v["mean_std"]
        mse = f"{s['mse_repeats'][0]:.4f} / {s['mse_repeats_knn'][0]:.4f}" if "mse_repeats" in s and \
            math.isfinite(s["mse_repeats"][0]) else "-"
        lines.append(f"| {v['label']} | {s['queries'][0]:.0f} | {mse} | {_pct(s['quality_at_25pct_cost'])} | "
                     f"{_aiq(s['aiq'])} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pick = ap.add_mutually_exclusive_group(required=True)
    pick.add_argument("--experiment", action="append", choices=sorted(EXPERIMENTS), help="repeatable")
    pick.add_argument("--all", action="store_true")
    pick.add_argument("--list", action="store_true")
    pick.add_argument("--render", action="store_true", help="only rewrite tune.md from tune.json")
    pick.add_argument("--repeats", action="store_true", help="the repeat-aware memory analysis (labels condition) "
                      "on each --dataset")
    pick.add_argument("--taggers", action="store_true", help="production's tagging vs labels in miniature "
                      "(mixllm.tagging.cluster_knn on base embeddings) on each --dataset")
    pick.add_argument("--adapter-latency", action="store_true", help="time the tag adapter's numpy transform "
                      "(RouterBench train embeddings) into the representation section")
    ap.add_argument("--quick", action="store_true", help="one fold seed instead of --fold-seeds (smoke run)")
    ap.add_argument("--fold-seeds", type=int, default=3, help="fold seeds 0..N-1 (default 3)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--max-queries", type=int, default=None, help="a subset of train queries (smoke runs)")
    ap.add_argument("--dataset", action="append", choices=sorted(DATASETS), help="train split(s) to cross-validate "
                    "on, repeatable (default routerbench)")
    ap.add_argument("--condition", action="append", choices=("labels", "production"), help="repeatable "
                    "(default labels): production removes the task column from training and tells no task")
    ap.add_argument("--home", type=Path, default=ROOT / ".mixllm" / "tune", help="MIXLLM_HOME of the run: "
                    "holds the embedding cache shared by every experiment")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.list:
        for e in EXPERIMENTS.values():
            print(f"{e.name:14s} {len(e.variants)} variants: {e.question}")
        return 0
    if args.render:
        results = json.loads((args.out / "tune.json").read_text(encoding="utf-8"))
        (args.out / "tune.md").write_text(markdown(_nan(results)), encoding="utf-8")
        return 0
    os.environ["MIXLLM_HOME"] = str(args.home.resolve())
    from mixllm.data import load_routerbench, load_training_log
    from mixllm.telemetry import go_offline

    go_offline()
    seeds = [0] if args.quick else list(range(args.fold_seeds))
    command = "python bench/tune.py " + " ".join(sys.argv[1:])
    if args.adapter_latency:
        results = json.loads((args.out / "tune.json").read_text(encoding="utf-8"))
        if "representation" not in results:
            raise SystemExit("run --experiment representation first: the latency joins its section")
        results["representation"]["adapter_latency"] = adapter_latency(
            load_routerbench(ROOT / "data" / "routerbench", "train"), args.home.resolve(), command)
        (args.out / "tune.json").write_text(json.dumps(_clean(results), indent=1, allow_nan=False), encoding="utf-8")
        (args.out / "tune.md").write_text(markdown(_nan(results)), encoding="utf-8")
        return 0
    for dataset in args.dataset or ["routerbench"]:
        source = ROOT / DATASETS[dataset][1]
        log = _limit(load_routerbench(source, "train") if source.is_dir() else load_training_log(source),
                     args.max_queries)
        if args.taggers:
            write_results(args.out, f"taggers ({dataset})", taggers(dataset, log, seeds, args.folds,
                                                                   args.home.resolve(), command, args.quick))
            continue
        if args.repeats:
            write_results(args.out, f"repeats ({dataset})", repeats(dataset, log, seeds, args.folds,
                                                                   args.home.resolve(), command))
            continue
        for name in (list(EXPERIMENTS) if args.all else args.experiment):
            for condition in args.condition or ["labels"]:
                run(EXPERIMENTS[name], log, seeds, args.folds, args.home.resolve(), args.out, command, args.quick,
                    dataset, condition)
    print(f"wrote {args.out / 'tune.json'} and {args.out / 'tune.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
