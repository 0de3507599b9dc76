"""Replays of a router on a test set: its frontier sweep, the latency-constrained stream and the online stream.

`router_sweep` turns any registered router (`mixllm.routers`) into a `Sweep`: one row of per-query choices (index
into `TestSet.models`) per sweep point, from the router's own `sweep` (its greedy `choose` at each willingness to
pay). The baselines themselves are routers in `mixllm.routers.baselines`.

Latency replay: queries arrive as a stream (Poisson or evenly spaced, `rate_per_s`); each LLM is a queue with
`concurrency` servers; service time = ttft + completion_tokens / tokens_per_second (tokens from the log row of the
chosen LLM, else the router's prediction). The router sees each LLM's current wait (time until a server frees up)
through `choose(..., waiting_ms=...)`. A query whose wait exceeds `max_wait_ms` is abandoned before it starts:
quality 0, no cost, no server time. The same stream is replayed without waiting-time awareness for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mixllm.catalogue import Catalogue
from mixllm.exceptions import ContractError
from mixllm.testset import TestSet, prompt_token_list


class RouterLike(Protocol):
    """The part of `mixllm.routers.base.Router` the replays need."""

    def predict(self, prompts: Sequence[str], prompt_tokens: Sequence[int] | None = None,
                tasks: Sequence[str | None] | None = None) -> Any: ...

    def choose(self, pred: Any, willingness_to_pay: float, greedy: bool = True, constraints: Any = None,
               waiting_ms: Any = None) -> np.ndarray: ...

    def sweep(self, pred: Any, wtps: Sequence[float]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Sweep:
    """A policy's choices per sweep point: `choices[k, n]` indexes `TestSet.models` (-1 = no candidate)."""

    name: str
    params: np.ndarray
    choices: np.ndarray
    note: str = ""


def predict_test(router: RouterLike, test: TestSet) -> Any:
    """The router's predictions for the test queries (with their prompt tokens and task labels)."""
    return router.predict(test.prompts, prompt_token_list(test), tasks=[str(t) for t in test.tasks])


# ------------------------------------------------------------------------------------------- router -----------
def _columns(pred_models: Sequence[str], test: TestSet) -> np.ndarray:
    """Map router model indices to test-set columns (-1 stays -1); every router model must be in the test log."""
    missing = sorted(set(pred_models) - set(test.models))
    if missing:
        raise ContractError(f"router models {missing} have no rows in the test log, so their choices cannot be "
                            "scored; evaluate on a log with every candidate LLM or remove them from the router")
    return np.array([test.models.index(m) for m in pred_models] + [-1])


def router_sweep(name: str, router: RouterLike, test: TestSet, wtps: Sequence[float], pred: Any = None,
                 note: str | None = None) -> Sweep:
    """The router's own decisions (`Router.sweep`: its greedy `choose`, the serving score function) per sweep
    point, mapped to test-set columns."""
    pred = predict_test(router, test) if pred is None else pred
    cols = _columns(pred.models, test)
    params, choices = router.sweep(pred, wtps)
    note = f"router {getattr(router, 'version', '')}" if note is None else note
    return Sweep(name, np.asarray(params, float), cols[np.asarray(choices, dtype=int)], note=note)


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
    pred = predict_test(router, test) if pred is None else pred
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
        j = int(router.choose(pred.take([i]), wtp,
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

    pred = predict_test(router, test) if pred is None else pred
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
                    batch = pred.take(idx)
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
                    learner.learn(recs, batch.take(keep))
                row[mode] = {"rel_quality": float(q.mean() / rq), "rel_cost": float(c.mean() / rc),
                             "utility": float(np.mean(q - c / wtp)),
                             "second_half_rel_quality": float(q[order[test.n // 2:]].mean() / rq)}
                if degraded is not None:
                    row[mode]["degraded_share"] = share / test.n
            out["scenarios"].setdefault(scenario, {})[level] = row
    return out
