"""Routing policies replayed by `mixllm.evaluation`: baselines, the router adapter, the latency and online replays.

Each policy turns a `TestSet` into a `Sweep`: one row of per-query choices (index into `TestSet.models`) per sweep
point. Score-based baselines choose argmax_j q_hat[i, j] - c_hat[i, j] / lam over a dense grid of lam (dollars per
unit of quality), plus both ends (best predicted quality, cheapest predicted cost); only the resulting points
matter, since the frontier metrics do not look at the parameter.

Baselines (RouterBench-style, all fitted on the TRAIN log only):
- single: every LLM alone, one point each (their hull is RouterBench's "random mix" of single models);
- random: a uniform random LLM per query (seeded), one point;
- oracle: true quality and cost, i.e. per query the cheapest LLM that succeeds at each trade-off;
- task_prior: per-task mean quality and cost of each LLM (a router told each query's dataset);
- knn: k nearest train queries on plain MiniLM embeddings; mean neighbour quality and cost per LLM;
- tfidf_lgbm: one LightGBM classifier per LLM on TF-IDF features; cost from a per-LLM linear fit on prompt tokens;
- plain_router: the real `MixLLMRouter` with `tag_enhanced=False` (the ablation of tag-enhanced embeddings).

Latency replay: queries arrive as a stream (Poisson or evenly spaced, `rate_per_s`); each LLM is a queue with
`concurrency` servers; service time = ttft + completion_tokens / tokens_per_second (tokens from the log row of the
chosen LLM, else the router's prediction). The router sees each LLM's current wait (time until a server frees up)
through `choose(..., waiting_ms=...)`. A query whose wait exceeds `max_wait_ms` is abandoned before it starts:
quality 0, no cost, no server time. The same stream is replayed without waiting-time awareness for comparison.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mixllm.catalogue import Catalogue
from mixllm.evaluation import TestSet
from mixllm.exceptions import ContractError

LAMBDA_GRID = np.geomspace(1e-8, 1e2, 241)


class RouterLike(Protocol):
    """The part of `MixLLMRouter` the evaluation needs."""

    def predict(self, prompts: Sequence[str], prompt_tokens: Sequence[int] | None = None) -> Any: ...

    def choose(self, pred: Any, willingness_to_pay: float, greedy: bool = True, constraints: Any = None,
               waiting_ms: Any = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Sweep:
    """A policy's choices per sweep point: `choices[k, n]` indexes `TestSet.models` (-1 = no candidate)."""

    name: str
    params: np.ndarray
    choices: np.ndarray
    note: str = ""


def score_sweep(name: str, q_hat: np.ndarray, c_hat: np.ndarray, lambdas: np.ndarray = LAMBDA_GRID,
                note: str = "") -> Sweep:
    """Choices maximising q_hat - c_hat / lam per lam, plus the best-quality and cheapest ends."""
    q_hat, c_hat = np.nan_to_num(q_hat, nan=0.0), np.nan_to_num(c_hat, nan=np.inf)
    rows = [np.argmax(q_hat - c_hat / lam - 1e-12 * c_hat, axis=1) for lam in lambdas]
    rows += [_best_then_cheapest(q_hat, c_hat), np.argmin(c_hat, axis=1)]
    return Sweep(name, np.r_[lambdas, np.inf, 0.0], np.array(rows, dtype=int), note)


def _best_then_cheapest(q_hat: np.ndarray, c_hat: np.ndarray) -> np.ndarray:
    top = q_hat >= q_hat.max(axis=1, keepdims=True) - 1e-12
    return np.argmin(np.where(top, c_hat, np.inf), axis=1)


def single_models(test: TestSet) -> list[Sweep]:
    return [Sweep(f"single:{m}", np.array([np.nan]), np.full((1, test.n), j)) for j, m in enumerate(test.models)]


def single_mix(test: TestSet) -> Sweep:
    """Every single LLM as one policy: its hull is RouterBench's random mix (linear interpolation) of them."""
    m = len(test.models)
    return Sweep("single_mix", np.full(m, np.nan), np.repeat(np.arange(m)[:, None], test.n, axis=1),
                 note="hull of the single-LLM points (random mixing of two LLMs)")


def random_router(test: TestSet, seed: int = 0) -> Sweep:
    rng = np.random.default_rng(seed)
    return Sweep("random", np.array([np.nan]), rng.integers(0, len(test.models), size=(1, test.n)),
                 note=f"uniform random LLM per query, seed {seed}")


def oracle(test: TestSet) -> Sweep:
    return score_sweep("oracle", test.quality, test.cost, note="true quality and cost (upper bound)")


def _per_model(train: TestSet, test: TestSet) -> tuple[np.ndarray, np.ndarray]:
    cols = [train.models.index(m) if m in train.models else None for m in test.models]
    if any(c is None for c in cols):
        raise ContractError(f"test models {sorted(set(test.models) - set(train.models))} are absent from the "
                            "train log; baselines need train rows for every test model")
    return train.quality[:, cols], train.cost[:, cols]


def task_prior(train: TestSet, test: TestSet) -> Sweep:
    """Per-task mean quality and cost of each LLM from train: a router told each query's dataset."""
    q, c = _per_model(train, test)
    q_hat, c_hat = np.empty(test.quality.shape), np.empty(test.cost.shape)
    for t in np.unique(test.tasks):
        rows = train.tasks == t
        rows = rows if rows.any() else np.ones(train.n, bool)  # unseen task: global means
        q_hat[test.tasks == t] = _weighted_mean(rows[None, :].astype(float), q)
        c_hat[test.tasks == t] = _weighted_mean(rows[None, :].astype(float), c)
    return score_sweep("task_prior", q_hat, c_hat, note="per-task mean quality and cost per LLM from train")


def _weighted_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """weights[n_test, n_train] @ values[n_train, m], ignoring unknown (NaN) values per column."""
    known = np.isfinite(values)
    total = weights @ np.where(known, values, 0.0)
    count = weights @ known.astype(float)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


ENCODER_MAX_TOKENS = 128  # the router's default max_seq_length: plain embeddings are then shared via its cache


def plain_embeddings(prompts: Sequence[str]) -> np.ndarray:
    """Plain MiniLM embeddings (L2-normalised) through the router's encoder class and embedding cache."""
    from mixllm.config import get_settings
    from mixllm.embeddings import EmbeddingCache

    cache = EmbeddingCache(get_settings().ensure_home() / "embeddings" / "cache.sqlite")
    return _base_encoder().encode(list(prompts), cache)


@functools.lru_cache(maxsize=1)
def _base_encoder() -> Any:
    from mixllm.embeddings import QueryEncoder

    return QueryEncoder.base(ENCODER_MAX_TOKENS)


def knn(train: TestSet, test: TestSet, k: int = 20, train_emb: np.ndarray | None = None,
        test_emb: np.ndarray | None = None) -> Sweep:
    """RouterBench's KNN router: mean quality and cost of each LLM over the k most similar train queries.

    Ties at the k-th similarity are all included, so the result does not depend on row order. (On RouterBench's
    few-shot prompts the truncated embedding of every ARC or Winogrande query is the same, so there KNN reduces
    to the per-task mean; only MBPP gets per-query neighbours.)
    """
    train_emb = plain_embeddings(train.prompts) if train_emb is None else train_emb
    test_emb = plain_embeddings(test.prompts) if test_emb is None else test_emb
    q, c = _per_model(train, test)
    k = min(k, train.n)
    sims = test_emb @ train_emb.T
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1:k]
    weights = (sims >= kth - 1e-6).astype(float)
    return score_sweep(f"knn{k}", _weighted_mean(weights, q), _weighted_mean(weights, c),
                       note=f"{k} nearest train queries (ties included), plain MiniLM")


def _fit_cost(train_tokens: np.ndarray, train_cost: np.ndarray, test_tokens: np.ndarray) -> np.ndarray:
    """Per-LLM least-squares cost = a + b * prompt_tokens (the price model, with mean completion folded in)."""
    x = np.column_stack([np.ones(len(train_tokens)), np.nan_to_num(train_tokens)])
    coef, *_ = np.linalg.lstsq(x, train_cost, rcond=None)
    return np.column_stack([np.ones(len(test_tokens)), np.nan_to_num(test_tokens)]) @ coef


def tfidf_lgbm(train: TestSet, test: TestSet, seed: int = 0) -> Sweep:
    """One LightGBM success classifier per LLM on TF-IDF features (the cheap non-neural learned router)."""
    import lightgbm as lgb
    from sklearn.feature_extraction.text import TfidfVectorizer

    q, c = _per_model(train, test)
    vec = TfidfVectorizer(max_features=5000, sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    x_train, x_test = vec.fit_transform(train.prompts), vec.transform(test.prompts)
    q_hat = np.empty(test.quality.shape)
    for j in range(q.shape[1]):
        known = np.isfinite(q[:, j])
        y = q[known, j] >= 0.5
        if y.all() or not y.any():
            q_hat[:, j] = y.mean()
            continue
        clf = lgb.LGBMClassifier(n_estimators=100, learning_rate=0.05, num_leaves=15, n_jobs=1, verbose=-1,
                                 random_state=seed)
        q_hat[:, j] = clf.fit(x_train[known], y).predict_proba(x_test)[:, 1]
    c_hat = _fit_cost(train.prompt_tokens, c, test.prompt_tokens)
    return score_sweep("tfidf_lgbm", q_hat, c_hat, note="LightGBM per LLM on TF-IDF; linear cost model")


# ------------------------------------------------------------------------------------------- router -----------
def _columns(pred_models: Sequence[str], test: TestSet) -> np.ndarray:
    """Map router model indices to test-set columns (-1 stays -1); every router model must be in the test log."""
    missing = sorted(set(pred_models) - set(test.models))
    if missing:
        raise ContractError(f"router models {missing} have no rows in the test log, so their choices cannot be "
                            "scored; evaluate on a log with every candidate LLM or remove them from the router")
    return np.array([test.models.index(m) for m in pred_models] + [-1])


def router_sweep(name: str, router: RouterLike, test: TestSet, wtps: Sequence[float], pred: Any = None) -> Sweep:
    """The router's own decisions (`choose`, the serving score function) at each willingness to pay."""
    pred = router.predict(test.prompts, prompt_token_list(test)) if pred is None else pred
    cols = _columns(pred.models, test)
    rows = [cols[np.asarray(router.choose(pred, float(w)), dtype=int)] for w in wtps]
    return Sweep(name, np.asarray(wtps, float), np.array(rows, dtype=int), note=f"router {getattr(router, 'version', '')}")


def prompt_token_list(test: TestSet) -> list[int] | None:
    if np.isfinite(test.prompt_tokens).all():
        return [int(t) for t in test.prompt_tokens]
    return None


def plain_router(train_log: pd.DataFrame, test: TestSet, wtps: Sequence[float], seed: int = 0,
                 catalogue: Catalogue | None = None) -> Sweep:
    """Train and replay the real router without tag enhancement (the ablation)."""
    from mixllm.router import MixLLMRouter, RouterConfig

    router = MixLLMRouter(config=RouterConfig(tag_enhanced=False, seed=seed, progress=False),
                          catalogue=catalogue).fit(train_log)
    return router_sweep("plain_router", router, test, wtps)


def slice_predictions(pred: Any, rows: np.ndarray) -> Any:
    """The predictions of some queries only (every per-query array field sliced, the rest kept)."""
    n = len(pred.quality)
    changes = {f.name: getattr(pred, f.name)[rows] for f in dataclasses.fields(pred)
               if isinstance(getattr(pred, f.name), np.ndarray) and getattr(pred, f.name).shape[:1] == (n,)}
    return dataclasses.replace(pred, **changes)


# ------------------------------------------------------------------------------------------- latency replay ---
class LatencyConfig(BaseModel):
    """The stream of the latency-constrained replay (see module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: float = Field(default=10.0, gt=0, description="Mean arrivals per second (100 per 10 s).")
    arrivals: Literal["poisson", "uniform"] = "poisson"
    max_wait_ms: float = Field(default=5000.0, gt=0, description="A longer wait abandons the query (quality 0).")
    willingness_to_pay: float | None = Field(default=None, gt=0, description="Default: the sweep's best-quality "
                                             "point, the setting that loads the strong (slow) LLMs most.")
    seed: int = 0


def _wtp_for_replay(sweep: Any) -> float:
    best = max(sweep.points, key=lambda p: (round(p["rel_quality"], 9), -p["rel_cost"]))
    return float(best["param"])


def latency_replay(router: RouterLike, test: TestSet, cfg: LatencyConfig, ref: int, *, pred: Any = None,
                   sweep: Any = None, catalogue: Catalogue | None = None) -> dict[str, Any]:
    """Replay one query stream twice, with and without the router seeing waiting times; figures per replay."""
    pred = router.predict(test.prompts, prompt_token_list(test)) if pred is None else pred
    catalogue = catalogue or getattr(router, "catalogue", None)
    if catalogue is None:
        raise ContractError("the latency replay needs the LLM catalogue (latency profiles); pass catalogue=")
    profiles = [catalogue.get(m).latency for m in pred.models]
    wtp = cfg.willingness_to_pay or (_wtp_for_replay(sweep) if sweep is not None else 1.0)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(test.n)
    gaps = rng.exponential(1000.0 / cfg.rate_per_s, test.n) if cfg.arrivals == "poisson" \
        else np.full(test.n, 1000.0 / cfg.rate_per_s)
    arrivals = np.cumsum(gaps) - gaps[0]
    cols = _columns(pred.models, test)
    tokens = np.where(np.isfinite(test.completion_tokens[:, cols[:-1]]), test.completion_tokens[:, cols[:-1]],
                      pred.completion_tokens)  # [n, len(pred.models)]: the log's tokens, else predicted
    replays = {}
    for mode, aware in (("wait_aware", True), ("wait_blind", False)):
        replays[mode] = _replay(router, pred, test, cols, profiles, tokens, order, arrivals, wtp, cfg, ref, aware)
    return {"config": f"{cfg.arrivals} arrivals at {cfg.rate_per_s:g}/s, max wait {cfg.max_wait_ms:g} ms, "
                      f"willingness to pay {wtp:.3g}", "willingness_to_pay": wtp, "replays": replays}


def _replay(router: RouterLike, pred: Any, test: TestSet, cols: np.ndarray, profiles: list[Any], tokens: np.ndarray,
            order: np.ndarray, arrivals: np.ndarray, wtp: float, cfg: LatencyConfig, ref: int,
            aware: bool) -> dict[str, float]:
    free = [np.zeros(p.concurrency) for p in profiles]  # when each server of each LLM is next free (ms)
    quality, cost, waits = np.zeros(test.n), np.zeros(test.n), np.zeros(test.n)
    timeouts, share = 0, np.zeros(len(profiles))
    for i, t in zip(order, arrivals):
        waiting = {m: max(0.0, float(f.min()) - t) for m, f in zip(pred.models, free)}
        j = int(router.choose(slice_predictions(pred, np.array([i])), wtp,
                              waiting_ms=waiting if aware else None)[0])
        if j < 0:
            continue
        share[j] += 1
        waits[i] = waiting[pred.models[j]]
        if waits[i] > cfg.max_wait_ms:
            timeouts += 1
            continue
        k = int(np.argmin(free[j]))
        free[j][k] = max(t, free[j][k]) + profiles[j].service_time_ms(float(tokens[i, j]))
        quality[i], cost[i] = test.quality[i, cols[j]], test.cost[i, cols[j]]
    rq, rc = test.quality[:, ref].mean(), test.cost[:, ref].mean()
    return {"quality": float(quality.mean()), "cost_usd": float(cost.mean()), "rel_quality": quality.mean() / rq,
            "rel_cost": cost.mean() / rc, "timeouts": float(timeouts), "timeout_rate": timeouts / test.n,
            "mean_wait_ms": float(waits.mean()), "p95_wait_ms": float(np.percentile(waits, 95)),
            "reference_share": float(share[list(cols).index(ref)] / test.n) if ref in cols else 0.0}


# ------------------------------------------------------------------------------------------- online replay ----
class OnlineConfig(BaseModel):
    """The continual-learning replay (see `online_replay`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost_levels: tuple[float, ...] = Field(default=(0.10, 0.25), description="Replay at the sweep's willingness "
                                           "to pay whose frozen point is nearest each relative cost.")
    batch_size: int = Field(default=10, ge=1, description="Feedback for a batch arrives before the next batch.")
    drift: bool = Field(default=True, description="Also replay a stream where the LLM the frozen router uses "
                        "most starts failing every query (a silent provider regression).")
    seed: int = 0


ONLINE_MODES = ("frozen", "refined", "thumbs")


def _wtp_near(sweep: Any, level: float) -> float:
    best = min(sweep.points, key=lambda p: (abs(p["rel_cost"] - level), p["param"]))
    return float(best["param"])


def online_replay(router: Any, test: TestSet, cfg: OnlineConfig, ref: int, *, pred: Any = None,
                  sweep: Any = None) -> dict[str, Any]:
    """Prequential replay of the test queries as a stream: route a batch, then feed back what was observed.

    Modes, on the same stream and willingness to pay: `frozen` (no feedback: the offline router), `refined`
    (observed quality and cost of the chosen LLM, `LogRecord`s) and `thumbs` (a thumbs up/down = the observed
    quality, `FeedbackRecord`s). Each mode learns on `router.fork()`, through `router.learn`, the same update path
    as serving's `update_many`; the evaluated router is left unchanged. Scenario `stationary` replays the log as
    is; `drift` (optional) makes the LLM that the frozen router picks most at that willingness to pay fail every
    query from the start of the stream, so learning from feedback must route around it.
    """
    from mixllm.schemas import FeedbackRecord, LogRecord

    pred = router.predict(test.prompts, prompt_token_list(test)) if pred is None else pred
    cols = _columns(pred.models, test)
    order = np.random.default_rng(cfg.seed).permutation(test.n)
    rq, rc = test.quality[:, ref].mean(), test.cost[:, ref].mean()
    wtps = {f"{round(lvl * 100)}pct": (_wtp_near(sweep, lvl) if sweep is not None else 1.0) for lvl in cfg.cost_levels}
    out: dict[str, Any] = {"config": f"{test.n} test queries in a seeded random order, feedback after every "
                                     f"{cfg.batch_size}", "scenarios": {}}
    for scenario in ("stationary", "drift") if cfg.drift else ("stationary",):
        for level, wtp in wtps.items():
            quality, degraded = test.quality, None
            if scenario == "drift":
                frozen_choice = cols[np.asarray(router.choose(pred, wtp), dtype=int)]
                degraded = int(np.bincount(frozen_choice[frozen_choice >= 0], minlength=len(test.models)).argmax())
                quality = test.quality.copy()
                quality[:, degraded] = 0.0
            row = {"willingness_to_pay": wtp, "degraded_model": None if degraded is None else test.models[degraded]}
            for mode in ONLINE_MODES:
                learner = router.fork() if mode != "frozen" else router
                q, c, share = np.zeros(test.n), np.zeros(test.n), 0
                for s in range(0, test.n, cfg.batch_size):
                    idx = order[s:s + cfg.batch_size]
                    batch = slice_predictions(pred, idx)
                    ch = np.asarray(learner.choose(batch, wtp), dtype=int)
                    col = cols[ch]
                    picked = ch >= 0
                    q[idx] = np.where(picked, quality[idx, np.clip(col, 0, None)], 0.0)
                    c[idx] = np.where(picked, test.cost[idx, np.clip(col, 0, None)], 0.0)
                    share += int(np.sum(picked & (col == degraded))) if degraded is not None else 0
                    if mode == "frozen" or not picked.any():
                        continue
                    keep = np.nonzero(picked)[0]
                    if mode == "refined":
                        recs = [LogRecord(query_id=test.query_ids[i], prompt=test.prompts[i],
                                          model=pred.models[ch[k]], quality=float(q[i]), cost_usd=float(c[i]))
                                for k, i in zip(keep, idx[keep])]
                    else:
                        recs = [FeedbackRecord(query_id=test.query_ids[i], model=pred.models[ch[k]],
                                               rating=float(q[i] >= 0.5), source="replay")
                                for k, i in zip(keep, idx[keep])]
                    learner.learn(recs, slice_predictions(batch, keep))
                row[mode] = {"rel_quality": float(q.mean() / rq), "rel_cost": float(c.mean() / rc),
                             "utility": float(np.mean(q - c / wtp)),
                             "second_half_rel_quality": float(q[order[test.n // 2:]].mean() / rq)}
                if degraded is not None:
                    row[mode]["degraded_share"] = share / test.n
            out["scenarios"].setdefault(scenario, {})[level] = row
    return out
