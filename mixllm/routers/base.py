"""The `Router` interface every routing strategy implements, and the `Predictions` it hands to the decision.

Why one interface: the service, the CLI, the pipeline and the evaluation should not care whether the artifact they
hold is the MixLLM router or a baseline (a single model, the task prior, kNN, ...). A router learns (`fit`) and
predicts every LLM's quality and cost for a batch of prompts (`predict`, the two abstract methods); the decision is
shared: `scores` (quality - cost / willingness to pay under the hard constraints; MixLLMRouter adds its LinUCB and
waiting terms), `choose` (the greedy argmax the evaluation sweeps), `decide` (the full trace the service logs, with
the propensity of each choice) and `route` (predict + decide). `save` writes the router's parts plus a manifest
naming its registered class, so `mixllm.routers.registry.load_router(dir)` loads any of them (RouteLLM's
`ROUTER_CLS` pattern: a name -> class table, see `registry`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mixllm import policy
from mixllm.exceptions import ArtifactError, ConfigError, ContractError, RoutingError
from mixllm.schemas import CandidateScore, RouteConstraints, RouteDecision

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Predictions:
    """Per-prompt, per-LLM predictions, arrays [n, m] (m = len(models)); embeddings [n, d] (d may be 0)."""

    models: tuple[str, ...]
    quality: np.ndarray
    completion_tokens: np.ndarray
    cost: np.ndarray
    embeddings: np.ndarray
    prompt_tokens: np.ndarray | None = None

    def take(self, rows: Sequence[int] | np.ndarray) -> "Predictions":
        """The predictions of some prompts, in the order of `rows` (same models; every array sliced alike)."""
        sel = np.asarray(rows, dtype=np.intp)
        return dataclasses.replace(self, **{f.name: v[sel] for f in dataclasses.fields(self)
                                            if isinstance(v := getattr(self, f.name), np.ndarray)})


class Router(ABC):
    """A routing strategy (see module docstring). Subclasses set `name` (the registry key) and `kind`.

    `kind` says how the evaluation reports it: "router" (a learned router), "baseline" or "single" (one LLM).
    Attributes every router has once fitted or loaded: `models` (the candidates, in score-column order),
    `manifest` (what the artifact says about itself), `catalogue` (prices and names; None for a baseline trained
    on LLMs the catalogue does not list).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "baseline"
    catalogue: Any = None
    manifest: dict

    # ------------------------------------------------------------------------------------------ learning --
    @abstractmethod
    def fit(self, log: pd.DataFrame) -> "Router":
        """Learn from canonical log rows (`mixllm.data`); returns self."""

    @abstractmethod
    def predict(self, prompts: Sequence[str], prompt_tokens: Sequence[int] | None = None,
                tasks: Sequence[str | None] | None = None) -> Predictions:
        """Every LLM's predicted quality and cost for each prompt. `tasks`: the log's task label of each prompt when
        the caller has one (only routers told the task use it, e.g. the task prior; the others ignore it)."""

    @property
    @abstractmethod
    def models(self) -> tuple[str, ...]:
        """The candidate LLMs, in the column order of `predict`."""

    @property
    def version(self) -> str:
        return str(self.manifest.get("router_version", "unfitted"))

    @property
    def exploration(self) -> policy.ExplorationConfig | None:
        """The stochastic exploration of `decide`; None (baselines): always greedy."""
        return None

    @property
    def rng(self) -> np.random.Generator:
        """The router's own random generator (exploration draws), seeded from `seed` so runs repeat."""
        if getattr(self, "_rng", None) is None:
            self._rng = np.random.default_rng(int(getattr(self, "seed", 0) or 0))
        return self._rng

    # ------------------------------------------------------------------------------------------ decision --
    def _check(self, pred: Predictions, willingness_to_pay: float) -> None:
        if not self.models:
            raise RoutingError(f"the {self.name} router is not trained: call fit(log) or load_router(dir) first")
        if not (willingness_to_pay > 0 and math.isfinite(willingness_to_pay)):
            raise RoutingError(f"willingness_to_pay must be a positive finite number, got {willingness_to_pay}")
        if tuple(pred.models) != tuple(self.models):
            raise RoutingError("predictions were made by a router with other models; call predict() again")

    def scores(self, pred: Predictions, willingness_to_pay: float, greedy: bool = True,
               constraints: RouteConstraints | None = None,
               waiting_ms: Mapping[str, float] | None = None) -> policy.Scores:
        """quality - cost / willingness_to_pay per candidate under the hard constraints; of two candidates of equal
        predicted quality the cheaper wins (a 1e-12 x cost tie-break). An unknown quality counts as 0, an unknown
        cost as infinite. Baselines model no exploration bonus and no waiting time: `greedy` and `waiting_ms`
        change nothing here (MixLLMRouter overrides this method with both terms)."""
        self._check(pred, willingness_to_pay)
        quality = np.nan_to_num(np.asarray(pred.quality, float), nan=0.0)
        cost = np.nan_to_num(np.asarray(pred.cost, float), nan=np.inf)
        ok, reasons = self._eligible(cost, constraints)
        zeros = np.zeros(cost.shape)
        s = policy.score(quality, cost, willingness_to_pay, zeros, zeros, 0.0, 0.0, ok, reasons)
        return dataclasses.replace(s, score=s.score - 1e-12 * cost)

    def _eligible(self, cost: np.ndarray, constraints: RouteConstraints | None) -> tuple[np.ndarray, list]:
        """The hard constraints' eligibility mask and reasons (`policy.constraint_mask`)."""
        return policy.constraint_mask(self.models, cost, constraints, self.catalogue)

    def choose(self, pred: Predictions, willingness_to_pay: float, greedy: bool = True,
               constraints: RouteConstraints | None = None,
               waiting_ms: Mapping[str, float] | None = None) -> np.ndarray:
        """Chosen model index per prompt (into pred.models), -1 when no candidate is eligible: always the greedy
        argmax (what the evaluation sweeps), whatever the exploration setting."""
        return policy.best(self.scores(pred, willingness_to_pay, greedy, constraints, waiting_ms))

    def select(self, s: policy.Scores) -> tuple[np.ndarray, np.ndarray]:
        """(chosen index, propensity) per prompt: `policy.select` with the router's exploration and generator
        (greedy when exploration is None or off: the argmax, propensity 1)."""
        return policy.select(s, self.exploration, self.rng)

    def decide(self, pred: Predictions, willingness_to_pay: float, constraints: RouteConstraints | None = None,
               greedy: bool = True, query_ids: Sequence[str | None] | None = None,
               waiting_ms: Mapping[str, float] | None = None) -> list[RouteDecision]:
        """Full decisions (trace per candidate, propensity of the choice) from predictions; raises RoutingError
        when a query has no eligible candidate."""
        s = self.scores(pred, willingness_to_pay, greedy, constraints, waiting_ms)
        chosen, propensity = self.select(s)
        n = len(chosen)
        ids = list(query_ids) if query_ids is not None else [None] * n
        if len(ids) != n:
            raise ContractError(f"{len(ids)} query_ids for {n} prompts")
        if (chosen < 0).any():
            i = int(np.argmax(chosen < 0))  # the first query without an eligible model
            why = "; ".join(f"{self.models[j]}: {r}" for j, r in sorted(s.reasons[i].items()))
            raise RoutingError(f"no eligible model for query {ids[i] or i}: {why}. Relax the constraints")
        # Python floats row by row (tolist), not one numpy scalar per term: this runs for every routed query.
        shown = np.where(s.eligible, s.score, s.quality - s.cost_term)  # ineligible: what it would have scored
        tokens = [[None if math.isnan(v) else v for v in row] for row in pred.completion_tokens.tolist()]
        rows = zip(s.quality.tolist(), s.cost.tolist(), tokens, s.cost_term.tolist(), np.asarray(s.bonus).tolist(),
                   np.asarray(s.penalty).tolist(), shown.tolist(), s.eligible.tolist(), propensity.tolist())
        models, version, wtp = self.models, self.version, float(willingness_to_pay)
        return [RouteDecision(query_id=ids[i], model=models[chosen[i]], willingness_to_pay=wtp,
                              router_version=version, propensity=pr,
                              candidates=tuple(CandidateScore(
                                  model=m, predicted_quality=q[j], predicted_cost_usd=c[j],
                                  predicted_completion_tokens=t[j], cost_term=ct[j], exploration_bonus=b[j],
                                  waiting_penalty=p[j], score=sc[j], eligible=e[j], reason=s.reasons[i].get(j))
                                  for j, m in enumerate(models)))
                for i, (q, c, t, ct, b, p, sc, e, pr) in enumerate(rows)]

    def route(self, prompts: Sequence[str], willingness_to_pay: float, constraints: RouteConstraints | None = None,
              greedy: bool = True, query_ids: Sequence[str | None] | None = None,
              waiting_ms: Mapping[str, float] | None = None) -> list[RouteDecision]:
        """predict + decide for a batch of prompts."""
        return self.decide(self.predict(prompts), willingness_to_pay, constraints, greedy, query_ids, waiting_ms)

    def sweep(self, pred: Predictions, wtps: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(params, choices[k, n]): the greedy choices at each willingness to pay (the evaluation's frontier)."""
        wtps = np.asarray(wtps, float)
        return wtps, np.array([np.asarray(self.choose(pred, float(w)), dtype=int) for w in wtps], dtype=int)

    # ---------------------------------------------------------------------------------------- evaluation --
    @classmethod
    def create(cls, *, seed: int = 0, catalogue: Any = None, **options: Any) -> "Router":
        """An unfitted router from plain options (the CLI's `--option key=value`); ConfigError on unknown ones."""
        options.pop("progress", None)  # baselines train without progress bars
        try:
            return cls(seed=seed, catalogue=catalogue, **options)
        except TypeError as e:
            raise ConfigError(f"invalid options {sorted(options)} for the {cls.name} router ({e})") from e

    @classmethod
    def for_evaluation(cls, train_log: pd.DataFrame | None, test_log: pd.DataFrame, *, seed: int = 0,
                       **options: Any) -> dict[str, "Router"]:
        """The fitted router(s) the evaluation replays under this registry name, keyed by report name. Default: one
        router built from `options`, fitted on the train log. Raises `NeedsTrainLog` without one."""
        if train_log is None:
            raise NeedsTrainLog(f"the {cls.name} router learns from a train log; pass train_log")
        return {cls.name: cls(seed=seed, **options).fit(train_log)}

    # ------------------------------------------------------------------------------------------ artifact --
    def save(self, directory: Path | str) -> Path:
        """Write the router to `directory` (created): its parts (`_save_parts`) and a manifest naming its class."""
        if not self.models:
            raise ArtifactError(f"the {self.name} router is not trained; nothing to save")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._save_parts(d)
        (d / MANIFEST).write_text(json.dumps(self.manifest | {"router_class": self.name,
                                                              "models": list(self.models)}, indent=1))
        return d

    def _save_parts(self, directory: Path) -> None:
        """Write everything `load` needs besides the manifest (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def load(cls, directory: Path | str) -> "Router":
        """Load a router saved by `save` (subclasses)."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")


class NeedsTrainLog(RoutingError):
    """A router the evaluation was asked for learns from a train log and none was given (reported as skipped)."""


def read_manifest(directory: Path | str) -> dict:
    """The manifest of a saved router; ArtifactError when it is missing or not JSON."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: no readable router manifest ({e}); is {directory} a saved router?") from e
