"""Willingness to pay calibrated to a spend target on recent traffic (`mixllm calibrate`).

Users think in dollars ("at most $2 per thousand requests") or in shares ("at most 20% of traffic to GPT-4"), the
router in willingness to pay. RouteLLM's `calibrate_threshold` maps a target share to its one threshold for two
models; here the router chooses among N models, so we sweep the willingness to pay over the router's own decisions
on the prompts users actually sent and read the expected spend, quality and model shares at each point.

Why predicted cost and quality: a log shows each query's cost under the model that answered it, but the question is
what the router *would* spend at another willingness to pay, a counterfactual. The router's predicted cost of the
model it would choose is that estimate; its bias is measured on logged rows that carry an observed cost
(observed / predicted, `cost_check`) and applied as one correction factor, so a router that under-predicts answer
length does not blow the budget. Intervals are a bootstrap over requests (the same resamples for every point), so
they say how much the figures move with the traffic mix, not with the router's own prediction error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixllm.exceptions import ConfigError, ContractError

DEFAULT_WTPS = tuple(float(w) for w in np.geomspace(1e-8, 1e2, 121))
MAX_REQUESTS = 20_000  # the most recent requests used: enough for tight intervals, bounded bootstrap memory


class SpendTarget(BaseModel):
    """What to hold: a cost per 1,000 requests, or a most share of traffic for one model (exactly one of them).

    `conservative` holds the target at the upper end of the interval instead of the expected value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost_per_1k_requests: float | None = Field(None, gt=0)
    model: str | None = None
    max_share: float | None = Field(None, gt=0, le=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    conservative: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> "SpendTarget":
        by_cost = self.cost_per_1k_requests is not None
        by_share = self.model is not None or self.max_share is not None
        if by_cost == by_share:
            raise ValueError("give exactly one target: cost_per_1k_requests, or model with max_share")
        if by_share and (self.model is None or self.max_share is None):
            raise ValueError("a share target needs both model and max_share")
        return self


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class OperatingPoint:
    """The router's expected figures at one willingness to pay over the calibration traffic."""

    willingness_to_pay: float
    cost_per_1k_requests: Interval
    quality: Interval
    shares: dict[str, float]
    target_share: Interval | None = None


@dataclass(frozen=True)
class Calibration:
    """The chosen point, whether it meets the target, and the whole curve it was chosen from."""

    target: SpendTarget
    chosen: OperatingPoint
    feasible: bool
    reason: str
    requests: int
    cost_correction: float
    cost_check: dict[str, Any]
    router_version: str
    curve: list[OperatingPoint]

    def as_dict(self, curve: bool = True) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = self.target.model_dump()
        if not curve:
            out.pop("curve")
        return out


def recent_traffic(logs: pd.DataFrame, days: float | None = None, now: datetime | None = None,
                   limit: int = MAX_REQUESTS) -> pd.DataFrame:
    """One row per request (query_id, prompt, prompt_tokens) from log rows, the most recent `limit` within `days`.

    A full-information log has a row per (query, model): a request counts once. Raises ContractError when no
    request is left, since a willingness to pay chosen on nothing would be a guess.
    """
    df = logs
    if days is not None and "ts" in df.columns and df["ts"].notna().any():
        now = now or datetime.now(timezone.utc)
        ts = pd.to_datetime(df["ts"], utc=True)
        df = df[ts >= pd.Timestamp(now - timedelta(days=days))]
    df = df.dropna(subset=["prompt"]).drop_duplicates(["query_id", "prompt"], keep="last")  # a request: id and prompt
    if df.empty:
        raise ContractError(f"no logged requests to calibrate on{'' if days is None else f' in the last {days} days'}")
    return df.tail(limit).reset_index(drop=True)


def cost_check(router: Any, logs: pd.DataFrame, pred: Any, traffic: pd.DataFrame) -> dict[str, Any]:
    """Observed vs predicted cost on the logged (query, model) rows with an observed cost, per model and overall.

    The ratio sum(observed) / sum(predicted) is the correction the spend figures get; the median absolute
    percentage error says how well single requests are predicted. Empty when no row carries a cost.
    """
    pos = {k: i for i, k in enumerate(zip(traffic["query_id"], traffic["prompt"]))}
    col = {m: j for j, m in enumerate(router.models)}
    at = np.array([pos.get(k, -1) for k in zip(logs["query_id"], logs["prompt"])], dtype=int)
    keep = logs["cost_usd"].notna().to_numpy() & (at >= 0) & logs["model"].isin(col).to_numpy()
    rows, i = logs[keep], at[keep]
    if rows.empty:
        return {"rows": 0, "ratio": 1.0, "per_model": {}}
    j = rows["model"].map(col).to_numpy()
    predicted = np.asarray(pred.cost, float)[i, j]
    observed = rows["cost_usd"].to_numpy(float)
    ok = np.isfinite(predicted) & (predicted > 0)
    if not ok.any():
        return {"rows": 0, "ratio": 1.0, "per_model": {}}
    per_model = {}
    for m in sorted(set(rows["model"][ok])):
        sel = ok & (rows["model"].to_numpy() == m)
        per_model[m] = {"rows": int(sel.sum()), "ratio": float(observed[sel].sum() / predicted[sel].sum()),
                        "mdape": float(np.median(np.abs(observed[sel] - predicted[sel]) / predicted[sel]))}
    return {"rows": int(ok.sum()), "ratio": float(observed[ok].sum() / predicted[ok].sum()), "per_model": per_model}


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, k] means of values[k, n] over request resamples drawn once (paired across the k points)."""
    n = values.shape[1]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    return counts @ values.T / n


def _interval(values: np.ndarray, boot: np.ndarray, level: float) -> list[Interval]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return [Interval(float(m), float(a), float(b)) for m, a, b in zip(values.mean(axis=1), lo, hi)]


def calibrate(router: Any, traffic: pd.DataFrame, target: SpendTarget, *, logs: pd.DataFrame | None = None,
              wtps: tuple[float, ...] = DEFAULT_WTPS, refine: int = 40, n_boot: int = 1000,
              seed: int = 0) -> Calibration:
    """The willingness to pay that meets `target` on `traffic` with the highest expected quality.

    Among the swept points whose expected (or, with `conservative`, upper-bound) cost or share is within the
    target, the one with the best expected quality wins; when none is, the cheapest point is returned with
    `feasible=False` and the reason. `logs` (the rows `traffic` came from) feed the cost check. `refine` extra
    points are swept between the two grid points where the target is crossed.
    """
    if target.model is not None and target.model not in router.models:
        raise ConfigError(f"target model {target.model!r} is not one of the router's models {list(router.models)}")
    tokens = ([None if pd.isna(t) else int(t) for t in traffic["prompt_tokens"]]
              if "prompt_tokens" in traffic.columns else None)  # unknown counts: the router estimates them
    pred = router.predict(traffic["prompt"].tolist(), tokens)
    check = cost_check(router, logs, pred, traffic) if logs is not None else {"rows": 0, "ratio": 1.0, "per_model": {}}
    correction = check["ratio"] if check["rows"] else 1.0
    curve = _curve(router, pred, target, wtps, correction, n_boot, seed)
    fine = _bracket(curve, target, refine)
    if fine:  # a second, finer sweep where the target is crossed: the coarse grid steps 21% per point
        curve = sorted(curve + _curve(router, pred, target, fine, correction, n_boot, seed),
                       key=lambda p: p.willingness_to_pay)
    chosen, feasible, reason = _choose(curve, target)
    return Calibration(target, chosen, feasible, reason, len(traffic), float(correction), check,
                       str(getattr(router, "version", "")), curve)


def _curve(router: Any, pred: Any, target: SpendTarget, wtps: tuple[float, ...], correction: float,
           n_boot: int, seed: int) -> list[OperatingPoint]:
    """The operating points of the router's greedy choices at each willingness to pay, with bootstrap intervals."""
    # `choose`, not `sweep`: baselines sweep their own parameter grid, while the service decides by willingness to pay
    choices = np.array([np.asarray(router.choose(pred, float(w)), dtype=int) for w in wtps], dtype=int)  # [k, n]
    rows = np.arange(choices.shape[1])
    cost = np.nan_to_num(np.asarray(pred.cost, float)[rows, choices], nan=0.0) * correction * 1000.0
    quality = np.nan_to_num(np.asarray(pred.quality, float)[rows, choices], nan=0.0)
    rng = np.random.default_rng(seed)
    level = target.confidence
    cost_iv = _interval(cost, _bootstrap_means(cost, n_boot, rng), level)
    quality_iv = _interval(quality, _bootstrap_means(quality, n_boot, rng), level)
    share_iv: list[Interval | None] = [None] * len(wtps)
    if target.model is not None:
        hit = (choices == router.models.index(target.model)).astype(float)
        share_iv = list(_interval(hit, _bootstrap_means(hit, n_boot, rng), level))
    return [OperatingPoint(float(w), c, q, _shares(router.models, choices[k]), s)
            for k, (w, c, q, s) in enumerate(zip(wtps, cost_iv, quality_iv, share_iv))]


def _bracket(curve: list[OperatingPoint], target: SpendTarget, points: int) -> tuple[float, ...]:
    """`points` willingness-to-pay values strictly between the last point within the target and the next one past
    it (none when the whole curve is on one side)."""
    held = [_held(p, target) <= _limit(target) for p in curve]
    for a, b, ok_a, ok_b in zip(curve, curve[1:], held, held[1:]):
        if ok_a and not ok_b and points > 0:
            return tuple(float(w) for w in np.geomspace(a.willingness_to_pay, b.willingness_to_pay, points + 2)[1:-1])
    return ()


def _shares(models: tuple[str, ...], chosen: np.ndarray) -> dict[str, float]:
    counts = np.bincount(chosen[chosen >= 0], minlength=len(models)) / max(len(chosen), 1)
    return {m: float(c) for m, c in zip(models, counts) if c > 0}


def _held(p: OperatingPoint, target: SpendTarget) -> float:
    """The figure the target holds at point p: expected (or upper-bound) cost per 1k requests, or model share."""
    iv = p.cost_per_1k_requests if target.model is None else p.target_share
    return iv.high if target.conservative else iv.mean


def _limit(target: SpendTarget) -> float:
    return float(target.cost_per_1k_requests if target.model is None else target.max_share)


def _choose(curve: list[OperatingPoint], target: SpendTarget) -> tuple[OperatingPoint, bool, str]:
    def held(p: OperatingPoint) -> float:
        return _held(p, target)

    limit = _limit(target)
    ok = [p for p in curve if held(p) <= limit]
    what = "cost per 1k requests" if target.model is None else f"share of {target.model}"
    bound = "upper bound of the" if target.conservative else "expected"
    if ok:
        best = max(ok, key=lambda p: (p.quality.mean, -held(p)))
        why = f"highest expected quality with the {bound} {what} <= {limit:g}"
        if len(ok) == len(curve):  # the user plans to this figure: say when it will not be reached, and why
            why += (f"; the target does not bind: even routing by predicted quality alone (the highest willingness to"
                    f" pay swept) holds {max(held(p) for p in curve):.4g}, so expect to spend less than the target")
        return best, True, why
    cheapest = min(curve, key=held)
    return cheapest, False, (f"no willingness to pay keeps the {bound} {what} <= {limit:g}: the lowest reachable "
                             f"is {held(cheapest):.4g}; returned that point")
