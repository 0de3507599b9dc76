"""Off-policy evaluation: what a router would have earned on the traffic another policy (the service) served.

The service logs one model per query, chosen with a known probability (the propensity). A target policy (a
candidate or the champion router) assigns its own probabilities pi(a | x) to every candidate model. With the logged
reward r of the logged choice a (probability mu):

- IPS:   V = mean(w r),                      w = pi(a | x) / mu (optionally clipped at `clip`: less variance, some bias)
- SNIPS: V = sum(w r) / sum(w)               (self-normalised: bounded by the rewards, a little biased)
- DR:    V = mean(sum_a pi(a | x) rhat(x, a) + w (r - rhat(x, a)))   (unbiased for any reward model rhat; a good
  rhat cuts the variance)

Confidence intervals: CLT on each decision's influence term (for SNIPS, its linearisation), or a percentile
bootstrap. The effective sample size is Kish's (sum w)^2 / sum w^2: how many decisions the estimate really rests on
(a deterministic target only learns from decisions where the logging policy happened to choose as it would).

No estimate below a minimum effective sample size (`min_ess`): value and interval are NaN. Why: with few decisions
where the logger chose as the target would, DR is nearly the reward model's own mean, and the CLT interval then
measures only how that mean varies over queries, not how wrong the model is (a tight, wrong interval).

Reward (`OPEConfig.reward`): "utility" = quality - cost / willingness_to_pay (the router's own objective at the
operating point; needs the observed cost) or "quality" alone. Decisions without a quality label are not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mixllm.exceptions import ContractError
from mixllm.feedback import LABEL_SOURCE, FeedbackConfig, label_decisions

Estimator = Literal["ips", "snips", "dr"]
ESTIMATORS: tuple[Estimator, ...] = ("ips", "snips", "dr")


@dataclass(frozen=True)
class TargetPolicy:
    """A policy to evaluate on logged decisions: its probabilities [n, m] over its candidates, the column of each
    logged model (-1: not one of its candidates, so probability 0) and, for DR, its reward model [n, m]."""

    probs: np.ndarray
    logged: np.ndarray
    reward_hat: np.ndarray | None = None

    def weights(self, propensity: np.ndarray, clip: float | None = None) -> np.ndarray:
        n = len(self.logged)
        p = np.where(self.logged >= 0, self.probs[np.arange(n), np.maximum(self.logged, 0)], 0.0)
        w = p / propensity
        return np.minimum(w, clip) if clip is not None else w


@dataclass(frozen=True)
class OPEEstimate:
    """A policy's estimated value with its confidence interval and effective sample size."""

    estimator: str
    value: float
    low: float
    high: float
    n: int
    ess: float
    ci: str
    level: float

    @property
    def available(self) -> bool:
        """False when there is no estimate (too few effective decisions: see `estimate`'s min_ess)."""
        return math.isfinite(self.value)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat MLflow/gate metrics: ``<prefix>/<estimator>``, ``..._low``, ``..._high``, ``<prefix>/ess``; only
        the ESS when there is no estimate."""
        out = {f"{prefix}/ess": self.ess}
        if self.available:
            out.update({f"{prefix}/{self.estimator}": self.value, f"{prefix}/{self.estimator}_low": self.low,
                        f"{prefix}/{self.estimator}_high": self.high})
        return out


def _check(propensity: np.ndarray, reward: np.ndarray, target: TargetPolicy, estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ContractError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
    n = len(propensity)
    if len(reward) != n or len(target.logged) != n or target.probs.shape[0] != n:
        raise ContractError(f"logged decisions and target policy disagree on the number of decisions ({n})")
    if n and not ((propensity > 0) & (propensity <= 1)).all():
        raise ContractError("propensities must lie in (0, 1]; a logged choice had a chance to happen")
    if not np.isfinite(reward).all():
        raise ContractError("rewards must be finite numbers (drop unlabelled decisions first)")
    if estimator == "dr" and (target.reward_hat is None or target.reward_hat.shape != target.probs.shape):
        raise ContractError("the doubly robust estimator needs the target's reward model, shaped like its probs")


def _terms(estimator: str, w: np.ndarray, reward: np.ndarray, target: TargetPolicy) -> tuple[float, np.ndarray]:
    """(value, per-decision influence terms whose mean is the value): the CLT works on the terms."""
    if estimator == "ips":
        psi = w * reward
        return float(psi.mean()), psi
    if estimator == "snips":
        if w.sum() <= 0:
            return math.nan, np.full(len(w), math.nan)
        v = float((w * reward).sum() / w.sum())
        return v, v + w * (reward - v) / w.mean()
    n = len(w)
    rhat = np.asarray(target.reward_hat, float)
    at_logged = np.where(target.logged >= 0, rhat[np.arange(n), np.maximum(target.logged, 0)], 0.0)
    psi = (target.probs * rhat).sum(axis=1) + w * (reward - at_logged)
    return float(psi.mean()), psi


def _boot_values(estimator: str, idx: np.ndarray, w: np.ndarray, reward: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """The estimator recomputed on each bootstrap resample (rows of idx); SNIPS exactly, not linearised."""
    if estimator == "snips":
        den = w[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (w * reward)[idx].sum(axis=1) / den, np.nan)
    return psi[idx].mean(axis=1)


def _interval(value: float, psi: np.ndarray, boot: np.ndarray | None, level: float) -> tuple[float, float]:
    if boot is not None:
        b = boot[np.isfinite(boot)]
        if not len(b):
            return math.nan, math.nan
        return float(np.quantile(b, (1 - level) / 2)), float(np.quantile(b, (1 + level) / 2))
    n = len(psi)
    if n < 2 or not math.isfinite(value):
        return math.nan, math.nan
    half = NormalDist().inv_cdf((1 + level) / 2) * float(np.std(psi, ddof=1)) / math.sqrt(n)
    return value - half, value + half


def kish_ess(w: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 (0 when every weight is 0)."""
    s2 = float((w ** 2).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def estimate(propensity: np.ndarray, reward: np.ndarray, target: TargetPolicy, estimator: Estimator = "dr", *,
             clip: float | None = None, ci: Literal["clt", "bootstrap"] = "clt", level: float = 0.95,
             n_boot: int = 1000, seed: int = 0, min_ess: float = 0.0) -> OPEEstimate:
    """The target policy's value on the logged decisions, with a `level` confidence interval and Kish's ESS; no
    estimate (NaN value and interval) when the ESS is below `min_ess`."""
    propensity, reward = np.asarray(propensity, float), np.asarray(reward, float)
    _check(propensity, reward, target, estimator)
    w = target.weights(propensity, clip)
    if kish_ess(w) < min_ess:
        return OPEEstimate(estimator, math.nan, math.nan, math.nan, len(w), kish_ess(w), ci, level)
    value, psi = _terms(estimator, w, reward, target)
    boot = None
    if ci == "bootstrap" and len(w):
        idx = np.random.default_rng(seed).integers(0, len(w), (n_boot, len(w)))
        boot = _boot_values(estimator, idx, w, reward, psi)
    low, high = _interval(value, psi, boot, level) if len(w) else (math.nan, math.nan)
    return OPEEstimate(estimator, value, low, high, len(w), kish_ess(w), ci, level)


def estimate_difference(propensity: np.ndarray, reward: np.ndarray, a: TargetPolicy, b: TargetPolicy,
                        estimator: Estimator = "dr", *, clip: float | None = None,
                        ci: Literal["clt", "bootstrap"] = "clt", level: float = 0.95, n_boot: int = 1000,
                        seed: int = 0, min_ess: float = 0.0) -> OPEEstimate:
    """V(a) - V(b) on the same logged decisions, paired (one resample / one influence term per decision for both),
    which is much tighter than comparing two separate intervals. `ess` is the smaller of the two policies' ESS;
    below `min_ess` there is no estimate."""
    propensity, reward = np.asarray(propensity, float), np.asarray(reward, float)
    _check(propensity, reward, a, estimator)
    _check(propensity, reward, b, estimator)
    wa, wb = a.weights(propensity, clip), b.weights(propensity, clip)
    if min(kish_ess(wa), kish_ess(wb)) < min_ess:
        return OPEEstimate(estimator, math.nan, math.nan, math.nan, len(wa), min(kish_ess(wa), kish_ess(wb)), ci,
                           level)
    (va, pa), (vb, pb) = _terms(estimator, wa, reward, a), _terms(estimator, wb, reward, b)
    value, psi = va - vb, pa - pb
    boot = None
    if ci == "bootstrap" and len(wa):
        idx = np.random.default_rng(seed).integers(0, len(wa), (n_boot, len(wa)))
        boot = _boot_values(estimator, idx, wa, reward, pa) - _boot_values(estimator, idx, wb, reward, pb)
    low, high = _interval(value, psi, boot, level) if len(wa) else (math.nan, math.nan)
    return OPEEstimate(estimator, value, low, high, len(wa), min(kish_ess(wa), kish_ess(wb)), ci, level)


# ------------------------------------------------------------------------------------- production traffic -----
class OPEConfig(BaseModel):
    """How the pipeline evaluates candidate and champion on logged production decisions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reward: Literal["utility", "quality"] = "utility"
    willingness_to_pay: float | None = Field(default=None, gt=0, description=(
        "operating point of the target routers and of the utility (None: Settings.default_willingness_to_pay); "
        "the log does not record each request's own willingness to pay"))
    clip: float | None = Field(default=None, gt=0, description="cap on importance weights (None: unclipped)")
    ci: Literal["clt", "bootstrap"] = "clt"
    level: float = Field(default=0.95, gt=0, lt=1)
    n_boot: int = Field(default=1000, ge=100)
    seed: int = 0
    since: datetime | None = None
    max_decisions: int | None = Field(default=None, gt=0, description="only the most recent N labelled decisions")
    min_ess: float = Field(default=10.0, ge=0, allow_inf_nan=False, description=(
        "no estimate (only the ESS is recorded) below this effective sample size: the interval would rest on the "
        "reward model alone"))


def logged_decisions(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (query_id, model) decision a policy made (propensity known) with its label: the service logs
    a decision and, later, maybe an observation of it (two rows); ratings label it via `mixllm.feedback`. An
    observed quality and cost win over a rating. Input: `LabelledDecisions.rows`."""
    d = rows[rows["propensity"].notna()].copy()
    if d.empty:
        return d
    d["_rank"] = d[LABEL_SOURCE].map({"observed": 0, "rating": 1}).fillna(2)
    d = d.sort_values(["_rank", "ts"], kind="stable")
    agg = d.groupby(["query_id", "model"], sort=False).agg(
        prompt=("prompt", "first"), quality=("quality", "first"), cost_usd=("cost_usd", "first"),
        propensity=("propensity", "first"), router_version=("router_version", "first"), ts=("ts", "min"))
    return agg.reset_index().sort_values("ts", kind="stable").reset_index(drop=True)


def _target(router: Any, prompts: Sequence[str], logged_models: Sequence[str], wtp: float,
            reward: str) -> TargetPolicy:
    """A loaded router as a greedy target policy on these prompts, with its own predictions as DR's reward model."""
    from mixllm import policy

    pred = router.predict(list(prompts))
    probs = policy.probabilities(router.scores(pred, wtp, greedy=True), None)
    quality = np.nan_to_num(np.clip(np.asarray(pred.quality, float), 0.0, 1.0), nan=0.0)
    rhat = quality - (np.nan_to_num(np.asarray(pred.cost, float), nan=0.0) / wtp if reward == "utility" else 0.0)
    column = {m: j for j, m in enumerate(router.models)}
    logged = np.array([column.get(m, -1) for m in logged_models], dtype=int)
    return TargetPolicy(probs, logged, rhat)


def production_metrics(settings: Any, candidate_dir: Path | str, champion_dir: Path | str | None,
                       config: OPEConfig | None = None,
                       feedback: FeedbackConfig | None = None) -> dict[str, float]:
    """Candidate and champion (loaded with `load_router`, as served) estimated on the store's labelled logged
    decisions with IPS, SNIPS and DR, plus their paired difference: flat metrics for the gate and the MLflow run
    (``ope/n_labelled``, ``ope/candidate/dr``, ``ope/candidate/dr_low``, ``ope/diff/dr_high``, ...). Ratings label
    decisions as in the training snapshot (`feedback`: the same `mixllm.feedback.FeedbackConfig`)."""
    from mixllm.routers.registry import load_router
    from mixllm.store import Store

    cfg = config or OPEConfig()
    wtp = cfg.willingness_to_pay or settings.default_willingness_to_pay
    store = Store(settings.store_url)
    try:
        logs, store_feedback = store.logs(since=cfg.since, policy_only=True), store.feedback(since=cfg.since)
    finally:
        store.dispose()
    d = logged_decisions(label_decisions(logs, store_feedback, feedback).rows)
    d = d[d["quality"].notna()] if len(d) else d
    missing_cost = int(d["cost_usd"].isna().sum()) if cfg.reward == "utility" and len(d) else 0
    if cfg.reward == "utility" and len(d):
        d = d[d["cost_usd"].notna()]
    if cfg.max_decisions is not None:
        d = d.tail(cfg.max_decisions)
    out: dict[str, float] = {"ope/n_labelled": float(len(d)), "ope/n_missing_cost": float(missing_cost),
                             "ope/willingness_to_pay": float(wtp)}
    if d.empty:
        return out
    reward = d["quality"].to_numpy(float)
    if cfg.reward == "utility":
        reward = reward - d["cost_usd"].to_numpy(float) / wtp
    prop = d["propensity"].to_numpy(float)
    targets = {"candidate": _target(load_router(candidate_dir), d["prompt"], d["model"], wtp, cfg.reward)}
    if champion_dir is not None:
        targets["champion"] = _target(load_router(champion_dir), d["prompt"], d["model"], wtp, cfg.reward)
    kw = {"clip": cfg.clip, "ci": cfg.ci, "level": cfg.level, "n_boot": cfg.n_boot, "seed": cfg.seed,
          "min_ess": cfg.min_ess}
    for est in ESTIMATORS:
        for role, target in targets.items():
            out.update(estimate(prop, reward, target, est, **kw).metrics(f"ope/{role}"))
        if "champion" in targets:
            diff = estimate_difference(prop, reward, targets["candidate"], targets["champion"], est, **kw)
            out.update({k: v for k, v in diff.metrics("ope/diff").items() if not k.endswith("/ess")})
    out["ope/logged_value"] = float(reward.mean())  # what the logging policy itself earned (on-policy)
    return out
