"""The meta decision maker: hard constraints, then MixLLM's score per candidate LLM, then the best eligible one.

score = (predicted quality + online correction) - predicted cost / willingness_to_pay
        + alpha * exploration bonus - beta * waiting penalty

- Online correction and exploration bonus come from a per-LLM LinUCB ridge regression on the *residual* reward
  (observed - predicted quality, and observed - predicted cost): feedback moves later decisions for similar queries
  at once, and the nightly retrain absorbs it into the predictors later. The context is a low-dimensional
  projection of the query embedding (PCA to `dim` components, unit norm, plus a bias) because 384x384 inverses per
  LLM would make every update and every bonus ~100x dearer for little gain. A^-1 is kept up to date with
  Sherman-Morrison, so an update is O(d^2).
- Waiting penalty: 0 while an LLM's current wait is within its tolerance tau, then exp(growth * (w - tau) / tau) - 1,
  i.e. it grows exponentially with the excess (MixLLM's latency term).
- Greedy (the default, and what evaluation uses) drops the exploration bonus. Ties break to the lower index, so the
  choice is deterministic for the same inputs and state.
- Stochastic exploration (`ExplorationConfig`, `select`): softmax over the scores or epsilon over the top
  candidates, with bounds on the share of non-greedy choices and on the expected extra spend. Every choice comes
  with the exact probability the policy had of making it (its propensity), which off-policy training and evaluation
  divide by; the LinUCB bonus stays a term of the score.
- LLMs on probation (`ExplorationConfig.probation`: a model just added to the catalogue, known from a few benchmark
  rows) are never the greedy choice (evaluation, `choose`, the gates' held-out comparison see the router without
  them) and get a reserved, bounded share of the decisions where they are predicted near the best, so feedback on
  them arrives without betting routing on a few-row estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixllm.catalogue import Catalogue
from mixllm.exceptions import ConfigError, UnknownModelError
from mixllm.schemas import RouteConstraints


class LinUCB:
    """Per-arm ridge regression of two residuals (quality, cost) on a shared context, with UCB widths."""

    def __init__(self, projection: np.ndarray, mean: np.ndarray, lam: float = 1.0) -> None:
        self.projection = np.asarray(projection, np.float64)  # [k, 384]
        self.mean = np.asarray(mean, np.float64)  # [384]
        self.lam = float(lam)
        self.a_inv: dict[str, np.ndarray] = {}
        self.b_quality: dict[str, np.ndarray] = {}
        self.b_cost: dict[str, np.ndarray] = {}
        self.n_updates: dict[str, int] = {}
        self._revision = 0  # bumped by every change of the arms' statistics: invalidates _stacked's cache
        self._cache: tuple[Any, ...] | None = None

    @property
    def dim(self) -> int:
        return self.projection.shape[0] + 1

    def context(self, embeddings: np.ndarray) -> np.ndarray:
        """[n, k+1]: unit-norm projection plus a bias feature (so a per-LLM offset can be learned too)."""
        z = (np.asarray(embeddings, np.float64) - self.mean) @ self.projection.T
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return np.column_stack([z, np.ones(len(z))])

    def add_arm(self, name: str) -> None:
        self.a_inv[name] = np.eye(self.dim) / self.lam
        self.b_quality[name] = np.zeros(self.dim)
        self.b_cost[name] = np.zeros(self.dim)
        self.n_updates[name] = 0
        self._revision += 1

    def remove_arm(self, name: str) -> None:
        for d in (self.a_inv, self.b_quality, self.b_cost, self.n_updates):
            d.pop(name, None)
        self._revision += 1

    def update(self, name: str, x: np.ndarray, quality_residual: float | None, cost_residual: float | None) -> None:
        """One observation for one arm: A += x x^T (Sherman-Morrison on A^-1), b += r x."""
        if name not in self.a_inv:
            self.add_arm(name)
        x = np.asarray(x, np.float64).ravel()
        ax = self.a_inv[name] @ x
        self.a_inv[name] -= np.outer(ax, ax) / (1.0 + x @ ax)
        if quality_residual is not None:
            self.b_quality[name] += quality_residual * x
        if cost_residual is not None:
            self.b_cost[name] += cost_residual * x
        self.n_updates[name] += 1
        self._revision += 1

    def _stacked(self, arms: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A^-1 [k, d, d] and the two ridge solutions theta [k, d] of these arms, stacked so that one call per query
        costs no Python loop over the LLMs. They change only with feedback, not per query: cached until the next
        update (the service routes many queries between two feedback events)."""
        key = (arms, self._revision)
        if self._cache is None or self._cache[0] != key:
            a_inv = np.stack([self.a_inv[a] for a in arms])
            theta_q = np.einsum("kde,ke->kd", a_inv, np.stack([self.b_quality[a] for a in arms]))
            theta_c = np.einsum("kde,ke->kd", a_inv, np.stack([self.b_cost[a] for a in arms]))
            self._cache = (key, a_inv, theta_q, theta_c)
        return self._cache[1], self._cache[2], self._cache[3]

    def estimates(self, names: Sequence[str], x: np.ndarray,
                  with_width: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(quality correction, cost correction, UCB width) arrays [n, m] for contexts x [n, d].

        `with_width=False` (greedy decisions, which add no bonus) returns zero widths without computing them."""
        n, m = len(x), len(names)
        dq, dc = np.zeros((n, m)), np.zeros((n, m))
        if with_width:  # no data yet: the prior's width
            width = np.repeat(np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(self.lam), m, axis=1)
        else:
            width = np.zeros((n, m))
        known = [j for j, name in enumerate(names) if name in self.a_inv]
        if not known:
            return dq, dc, width
        a_inv, theta_q, theta_c = self._stacked(tuple(names[j] for j in known))
        dq[:, known], dc[:, known] = x @ theta_q.T, x @ theta_c.T
        if with_width:
            quad = (np.matmul(x[None], a_inv) * x[None]).sum(axis=-1).T  # x^T A^-1 x per (query, arm)
            width[:, known] = np.sqrt(np.maximum(quad, 0.0))
        return dq, dc, width

    def state(self) -> dict[str, np.ndarray]:
        out = {"projection": self.projection, "mean": self.mean, "lam": np.array(self.lam)}
        for name in self.a_inv:
            out[f"a_inv::{name}"] = self.a_inv[name]
            out[f"b_quality::{name}"] = self.b_quality[name]
            out[f"b_cost::{name}"] = self.b_cost[name]
            out[f"n::{name}"] = np.array(self.n_updates[name])
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> "LinUCB":
        bandit = cls(state["projection"], state["mean"], float(state["lam"]))
        for key in state:
            if key.startswith("a_inv::"):
                name = key.split("::", 1)[1]
                bandit.a_inv[name] = np.array(state[key])
                bandit.b_quality[name] = np.array(state[f"b_quality::{name}"])
                bandit.b_cost[name] = np.array(state[f"b_cost::{name}"])
                bandit.n_updates[name] = int(state[f"n::{name}"])
        return bandit


def waiting_penalty(waiting_ms: np.ndarray, tau_ms: np.ndarray, growth: float = 1.0) -> np.ndarray:
    """0 within tolerance, exp(growth * excess / tau) - 1 beyond it (capped to stay finite)."""
    w, tau = np.asarray(waiting_ms, float), np.maximum(np.asarray(tau_ms, float), 1e-9)
    excess = np.maximum(w - tau, 0.0) / tau
    return np.expm1(np.minimum(growth * excess, 50.0))


@dataclass(frozen=True)
class Scores:
    """Every term of the score, arrays [n, m]; `eligible` False where a hard constraint excludes the candidate."""

    quality: np.ndarray
    cost: np.ndarray
    cost_term: np.ndarray
    bonus: np.ndarray
    penalty: np.ndarray
    score: np.ndarray
    eligible: np.ndarray
    reasons: list[dict[int, str]]
    probation: np.ndarray | None = None  # [m] True: the candidate is chosen by exploration only (never greedy)


def constraint_mask(models: Sequence[str], cost: np.ndarray, constraints: RouteConstraints | None,
                    catalogue: Catalogue) -> tuple[np.ndarray, list[dict[int, str]]]:
    """Eligibility [n, m] and, per query, {candidate index: why it is excluded}. Unknown names raise."""
    n, m = cost.shape
    ok = np.ones((n, m), dtype=bool)
    reasons: list[dict[int, str]] = [{} for _ in range(n)]
    if constraints is None:
        return ok, reasons
    if constraints.allowed_models is not None:
        catalogue.check_known(constraints.allowed_models)
        unknown = [a for a in constraints.allowed_models if a not in models]
        if unknown:
            raise UnknownModelError(f"allowed_models {unknown} are in the catalogue but this router has no "
                                    f"predictors for them (router models: {', '.join(models)}); retrain or add them")
        for j, name in enumerate(models):
            if name not in constraints.allowed_models:
                ok[:, j] = False
                for r in reasons:
                    r[j] = "not in allowed_models"
    if constraints.max_cost_usd is not None:
        over = cost > constraints.max_cost_usd
        for i, j in zip(*np.nonzero(over & ok)):
            reasons[i][j] = f"predicted cost {cost[i, j]:.6g} USD exceeds max_cost_usd {constraints.max_cost_usd:.6g}"
        ok &= ~over
    return ok, reasons


PROBATION_REASON = "on probation: chosen by exploration only (ExplorationConfig.probation)"


def score(quality: np.ndarray, cost: np.ndarray, willingness_to_pay: float, bonus: np.ndarray,
          penalty: np.ndarray, alpha: float, beta: float, eligible: np.ndarray,
          reasons: list[dict[int, str]], probation: np.ndarray | None = None) -> Scores:
    """MixLLM's score; ineligible candidates get -inf. `probation` ([m] bool, `probation_mask`): candidates that
    `best` never picks while another is eligible (their eligible entries say so in `reasons`)."""
    cost_term = cost / willingness_to_pay
    s = quality - cost_term + alpha * bonus - beta * penalty
    if probation is not None and np.any(probation):
        probation = np.asarray(probation, bool)
        for i, j in zip(*np.nonzero(eligible & probation[None, :])):
            reasons[i].setdefault(int(j), PROBATION_REASON)
    else:
        probation = None
    return Scores(quality, cost, cost_term, alpha * bonus, beta * penalty, np.where(eligible, s, -np.inf),
                  eligible, reasons, probation)


def probation_mask(models: Sequence[str], exploration: "ExplorationConfig | None") -> np.ndarray | None:
    """[m] True for the models `exploration` has on probation (None when there are none)."""
    if exploration is None or not exploration.probation:
        return None
    return np.array([m in exploration.probation for m in models], bool)


def _greedy_scores(scores: Scores) -> np.ndarray:
    """The scores `best` ranks: a probation candidate's is -inf wherever another candidate is eligible."""
    if scores.probation is None:
        return scores.score
    others = (scores.eligible & ~scores.probation[None, :]).any(axis=1, keepdims=True)
    return np.where(others & scores.probation[None, :], -np.inf, scores.score)


def best(scores: Scores) -> np.ndarray:
    """Index of the best eligible candidate per query (lowest index on ties), -1 when none is eligible. A candidate
    on probation is the best only where nothing else is eligible (e.g. a request that allows only it)."""
    if scores.score.shape[1] == 0:
        return np.full(scores.score.shape[0], -1)
    idx = np.argmax(_greedy_scores(scores), axis=1)
    return np.where(scores.eligible.any(axis=1), idx, -1)


class ExplorationConfig(BaseModel):
    """How the decision maker explores: which stochastic policy over the scores, and how much it may cost.

    - ``off``: greedy (propensity 1), as evaluation uses.
    - ``softmax``: P(j) proportional to exp((score_j - best score) / temperature); temperature is in score units
      (quality minus cost / willingness_to_pay), so 0.02 makes a candidate 0.02 worse e^-1 times as likely.
    - ``epsilon``: with probability epsilon, one of the `top_k - 1` best non-greedy candidates, uniformly.

    `floor`: every explorable candidate gets at least this probability, whatever the mode gave it (then the bounds
    apply). Why: softmax over the router's own scores never tries a model the router under-rates (a model
    predicted 0.1 worse is chosen e^-5 times as often at temperature 0.02), so the logs never correct that model;
    a uniform floor spends a known share of traffic on learning every model (and a new one) where it is eligible.

    Bounds, applied after the mode and exact in the returned propensities: a candidate whose predicted cost exceeds
    `max_cost_ratio` x the greedy one's is never explored; the non-greedy probability of each decision is at most
    `max_share` (so at most that share of traffic, in expectation); the expected predicted cost of a decision
    exceeds greedy's by at most `max_extra_cost` x greedy's cost. The bounds scale all non-greedy probabilities
    by one factor, so their ranking is kept.

    `probation`: LLMs never chosen greedily (a newcomer known from a few rows: the nightly adds it so, see
    `mixllm.pipeline.add_newcomers`). On each decision where such an LLM's score is within `probation_margin` of
    the greedy choice's (and its cost within `max_cost_ratio`), it gets `probation_share` (split among the
    probation LLMs that qualify), whatever `mode` says (also with mode ``off``): a share of traffic reserved for
    learning where it is best, costing at most probation_share x probation_margin predicted utility per decision.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["off", "softmax", "epsilon"] = "off"
    temperature: float = Field(default=0.02, gt=0.0, allow_inf_nan=False)
    epsilon: float = Field(default=0.05, ge=0.0, le=1.0)
    top_k: int = Field(default=3, ge=2)
    floor: float = Field(default=0.0, ge=0.0, le=0.5, allow_inf_nan=False)
    max_share: float = Field(default=0.1, ge=0.0, le=1.0)
    max_cost_ratio: float | None = Field(default=None, ge=1.0, allow_inf_nan=False)
    max_extra_cost: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    probation: tuple[str, ...] = ()
    probation_share: float = Field(default=0.25, ge=0.0, le=0.5, allow_inf_nan=False)
    probation_margin: float = Field(default=0.1, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _explores_when_on(self) -> "ExplorationConfig":
        if self.probation and self.probation_share == 0.0:
            raise ValueError(f"probation {list(self.probation)} with probation_share=0 never tries them; set a "
                             "share or leave probation empty")
        if self.probation and self.mode != "off" and self.max_share + self.probation_share > 1.0:
            raise ValueError(f"max_share {self.max_share} + probation_share {self.probation_share} exceed 1")
        if self.mode != "off" and self.max_share == 0.0:
            raise ValueError(f"mode {self.mode!r} with max_share=0 never explores; use mode='off'")
        if self.mode == "epsilon" and self.epsilon == 0.0:
            raise ValueError("mode 'epsilon' with epsilon=0 never explores; use mode='off'")
        return self


def probabilities(scores: Scores, exploration: ExplorationConfig | None) -> np.ndarray:
    """[n, m] probability of choosing each candidate under `exploration` (rows sum to 1; all-zero rows when no
    candidate is eligible). Ineligible candidates and candidates of -inf score get 0. Used by `select` and by
    off-policy evaluation, which needs a target policy's probabilities of the logged choices."""
    n, m = scores.score.shape
    greedy = best(scores)
    p = np.zeros((n, m))
    rows = np.nonzero(greedy >= 0)[0]
    p[rows, greedy[rows]] = 1.0
    if not _explores(scores, exploration) or not len(rows):
        return p
    g = greedy[rows]
    s, cost = scores.score[rows], np.asarray(scores.cost, float)[rows]
    s_g, c_g = s[np.arange(len(rows)), g][:, None], cost[np.arange(len(rows)), g][:, None]
    explorable = scores.eligible[rows] & np.isfinite(s)
    explorable[np.arange(len(rows)), g] = False
    if exploration.max_cost_ratio is not None:
        with np.errstate(invalid="ignore"):
            explorable &= ~(cost > exploration.max_cost_ratio * c_g)
    on_probation = np.zeros(m, bool) if scores.probation is None else scores.probation
    reserved = _probation_share(s, s_g, explorable & on_probation[None, :], exploration)
    explorable &= ~on_probation[None, :]
    q = _regular_share(s, s_g, cost, c_g, explorable, exploration) + reserved
    p[rows] = q
    p[rows, g] = 1.0 - q.sum(axis=1)
    return p


def _explores(scores: Scores, exploration: ExplorationConfig | None) -> bool:
    """Whether `exploration` makes any decision stochastic (a mode, or a probation candidate present)."""
    if exploration is None:
        return False
    return exploration.mode != "off" or (scores.probation is not None and bool(scores.probation.any()))


def _probation_share(s: np.ndarray, s_g: np.ndarray, allowed: np.ndarray, cfg: ExplorationConfig) -> np.ndarray:
    """`probation_share` split among the probation candidates scoring within `probation_margin` of greedy."""
    near = allowed & (s >= s_g - cfg.probation_margin)
    k = near.sum(axis=1, keepdims=True)
    return np.where(near, cfg.probation_share / np.maximum(k, 1), 0.0)


def _regular_share(s: np.ndarray, s_g: np.ndarray, cost: np.ndarray, c_g: np.ndarray, explorable: np.ndarray,
                   exploration: ExplorationConfig) -> np.ndarray:
    """The mode's non-greedy probabilities (softmax / epsilon, floor), scaled by the bounds; 0 with mode off."""
    if exploration.mode == "off":
        return np.zeros(s.shape)
    if exploration.mode == "softmax":
        q = np.where(explorable, np.exp(np.minimum(np.where(explorable, s - s_g, 0.0), 0.0)
                                        / exploration.temperature), 0.0)
        q /= 1.0 + q.sum(axis=1, keepdims=True)
    else:
        q = _epsilon_share(s, explorable, exploration)
    if exploration.floor > 0:
        q = np.where(explorable, np.maximum(q, exploration.floor), 0.0)
    return q * _bound_factor(q, cost, c_g, exploration)[:, None]


def _epsilon_share(s: np.ndarray, explorable: np.ndarray, cfg: ExplorationConfig) -> np.ndarray:
    """epsilon spread uniformly over the `top_k - 1` best explorable candidates (ties to the lower index)."""
    order = np.argsort(np.where(explorable, -s, np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(s.shape[1])[None].repeat(len(s), 0), axis=1)
    top = explorable & (rank < cfg.top_k - 1)
    k = top.sum(axis=1, keepdims=True)
    return np.where(top, cfg.epsilon / np.maximum(k, 1), 0.0)


def _bound_factor(q: np.ndarray, cost: np.ndarray, c_g: np.ndarray, cfg: ExplorationConfig) -> np.ndarray:
    """One factor per row scaling the non-greedy probabilities q so that both the share and the spend bound hold."""
    share = q.sum(axis=1)
    factor = np.where(share > cfg.max_share, cfg.max_share / np.maximum(share, 1e-300), 1.0)
    if cfg.max_extra_cost is not None:
        with np.errstate(invalid="ignore"):
            extra = np.nansum(np.where(q > 0, q * (cost - c_g), 0.0), axis=1)
        allowed = cfg.max_extra_cost * c_g[:, 0]
        over = extra > allowed
        factor = np.where(over, np.minimum(factor, allowed / np.where(over, extra, 1.0)), factor)
    return np.clip(np.nan_to_num(factor, nan=0.0), 0.0, 1.0)


def select(scores: Scores, exploration: ExplorationConfig | None,
           rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """(chosen index, propensity) per query: a draw from `probabilities`, and the probability of what was drawn.

    Greedy when `exploration` is None or off: ``(best(scores), ones)``, no draw. A query with no eligible candidate
    gets -1 (propensity 1: nothing was chosen at random)."""
    greedy = best(scores)
    if not _explores(scores, exploration):
        return greedy, np.ones(len(greedy))
    if rng is None:
        raise ConfigError("exploration is on but no random generator was given; pass np.random.default_rng(seed)")
    p = probabilities(scores, exploration)
    cum = np.cumsum(p, axis=1)
    u = rng.random(len(p))[:, None] * cum[:, -1:]
    chosen = np.where(greedy >= 0, np.argmax(cum > u, axis=1), -1)
    propensity = np.where(chosen >= 0, p[np.arange(len(p)), np.maximum(chosen, 0)], 1.0)
    return chosen, propensity
