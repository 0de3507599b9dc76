"""Baseline routers (RouterBench-style), each a registered `Router`: fit on a log, saved, loaded, served, evaluated.

Every baseline predicts a quality q_hat and a cost c_hat per (prompt, LLM) and decides through the shared
`Router.decide` (argmax q_hat - c_hat / willingness_to_pay, the cheaper on equal quality). The evaluation sweeps them
over a dense fixed grid (`LAMBDA_GRID`, dollars per unit of quality) plus both limits (best predicted quality, then
cheapest; cheapest), since only the resulting points matter to the frontier.

- single: one LLM always (its hull with the other singles is RouterBench's "random mix");
- random: a uniform random LLM per prompt (the router's own seeded generator);
- oracle: the true quality and cost of a full-information log given at construction (an upper bound; it refuses
  prompts that log has no labels for);
- task_prior: per-task mean quality and cost of each LLM (a router told each prompt's dataset: a reference a user
  without task labels does not have);
- knn: mean quality and cost over the k most similar train prompts (plain MiniLM embeddings, ties included);
- lgbm: one LightGBM success classifier per LLM on plain MiniLM embeddings; tfidf_lgbm: the same on TF-IDF features;
  both with a per-LLM linear cost model on prompt tokens;
- mlp: RouterBench's MLP quality predictor on plain MiniLM (one network for every LLM), linear cost model.
The plain-embedding ablation of the MixLLM router (`plain_router`) is `mixllm.router.PlainMixLLMRouter`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import datetime, timezone
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mixllm import policy
from mixllm.catalogue import Catalogue, estimate_tokens, load_catalogue
from mixllm.exceptions import ArtifactError, ContractError, RoutingError, TrainingError, UnknownModelError
from mixllm.routers.base import Predictions, Router, read_manifest
from mixllm.schemas import RouteConstraints
from mixllm.testset import TestSet

LAMBDA_GRID = np.geomspace(1e-8, 1e2, 241)
ENCODER_MAX_TOKENS = 128  # the router's default max_seq_length: plain embeddings are then shared via its cache


class _Names:
    """Stands in for a catalogue when a baseline was trained on LLMs the catalogue does not list."""

    def __init__(self, models: Sequence[str]) -> None:
        self.models = tuple(models)

    def check_known(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(self.models))
        if unknown:
            raise UnknownModelError(f"{unknown} are not models of this router ({', '.join(self.models)})")


def _weighted_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """weights[n_query, n_train] @ values[n_train, m], ignoring unknown (NaN) values per column."""
    known = np.isfinite(values)
    total = weights @ np.where(known, values, 0.0)
    count = weights @ known.astype(float)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _best_then_cheapest(q_hat: np.ndarray, c_hat: np.ndarray) -> np.ndarray:
    top = q_hat >= q_hat.max(axis=1, keepdims=True) - 1e-12
    return np.argmin(np.where(top, c_hat, np.inf), axis=1)


def _tokens(prompts: Sequence[str], prompt_tokens: Sequence[int] | None) -> np.ndarray:
    if prompt_tokens is None:
        return np.array([estimate_tokens(p) for p in prompts], float)
    if len(prompt_tokens) != len(prompts):
        raise ContractError(f"{len(prompt_tokens)} prompt_tokens for {len(prompts)} prompts")
    return np.array([estimate_tokens(p) if t is None or pd.isna(t) else t for t, p in zip(prompt_tokens, prompts)],
                    float)


class ScoreRouter(Router):
    """A baseline that predicts q_hat / c_hat. Subclasses implement `fit`, `_estimates` and `_state`/`_restore`."""

    kind: ClassVar[str] = "baseline"
    params: ClassVar[tuple[str, ...]] = ("seed",)  # constructor arguments saved in the artifact

    def __init__(self, seed: int = 0, catalogue: Catalogue | None = None) -> None:
        self.seed = seed
        self.catalogue = catalogue
        self._models: tuple[str, ...] = ()
        self.manifest: dict = {}

    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    @property
    def note(self) -> str:
        return ""

    def _learned(self, log: pd.DataFrame | TestSet, unknown_quality: str = "keep") -> TestSet:
        """The log pivoted (unknown quality kept as NaN: never learned as a failure; a `TestSet` is taken as it
        is, so the evaluation pivots its train log once for every baseline); remembers the models."""
        train = log if isinstance(log, TestSet) else TestSet.from_log(log, unknown_quality=unknown_quality)
        self._models = train.models
        created = datetime.now(timezone.utc)
        digest = hashlib.sha256("\0".join([*train.prompts, *train.models]).encode() + train.quality.tobytes()
                                + train.cost.tobytes()).hexdigest()[:8]
        self.manifest = {"router_version": f"{created:%Y%m%dT%H%M%S}-{self.name}-{digest}",
                         "created": created.isoformat(), "n_queries": train.n, "models": list(train.models),
                         "params": {p: getattr(self, p) for p in self.params}}
        return train

    def predict(self, prompts: Sequence[str], prompt_tokens: Sequence[int] | None = None,
                tasks: Sequence[str | None] | None = None) -> Predictions:
        if not self._models:
            raise RoutingError(f"the {self.name} router is not trained: call fit(log) or load_router(dir) first")
        prompts = list(prompts)
        tokens = _tokens(prompts, prompt_tokens)
        if tasks is not None and len(tasks) != len(prompts):
            raise ContractError(f"{len(tasks)} tasks for {len(prompts)} prompts")
        q, c = self._estimates(prompts, tokens, None if tasks is None else list(tasks))
        n, m = len(prompts), len(self._models)
        return Predictions(self._models, q, np.full((n, m), np.nan), c, np.zeros((n, 0), np.float32), tokens)

    def _estimates(self, prompts: list[str], tokens: np.ndarray,
                   tasks: list[str | None] | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _eligible(self, cost: np.ndarray, constraints: RouteConstraints | None) -> tuple[np.ndarray, list]:
        return policy.constraint_mask(self.models, cost, constraints, self.catalogue or _Names(self.models))

    def sweep(self, pred: Predictions, wtps: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """The choices over `LAMBDA_GRID` (not the evaluation's `wtps`: a baseline's frontier should not depend on
        how coarsely the router under test is swept) plus both limits: best predicted quality, then cheapest."""
        params, rows = super().sweep(pred, LAMBDA_GRID)
        ok = self.scores(pred, 1.0).eligible
        q = np.where(ok, np.nan_to_num(pred.quality, nan=0.0), -np.inf)
        c = np.where(ok, np.nan_to_num(pred.cost, nan=np.inf), np.inf)
        rows = np.vstack([rows, _best_then_cheapest(q, c), np.argmin(c, axis=1)])
        return np.r_[params, np.inf, 0.0], rows

    # ------------------------------------------------------------------------------------------ artifact --
    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able facts, arrays) that `_restore` turns back into the fitted router."""
        return {}, {}

    def _restore(self, facts: dict, arrays: dict[str, np.ndarray]) -> None:
        pass

    def _save_parts(self, directory: Path) -> None:
        facts, arrays = self._state()
        doc = {"params": {p: getattr(self, p) for p in self.params}, "models": list(self._models), "facts": facts}
        (directory / "state.json").write_text(json.dumps(doc, indent=1))
        np.savez(directory / "arrays.npz", **arrays)
        if self.catalogue is not None:
            self.catalogue.save(directory / "catalogue.yaml")

    @classmethod
    def load(cls, directory: Path | str) -> "ScoreRouter":
        d = Path(directory)
        manifest = read_manifest(d)
        try:
            doc = json.loads((d / "state.json").read_text())
            catalogue = load_catalogue(d / "catalogue.yaml") if (d / "catalogue.yaml").exists() else None
            router = cls(**doc["params"], catalogue=catalogue)
            with np.load(d / "arrays.npz", allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            router._models = tuple(doc["models"])
            router._restore(doc["facts"], arrays)
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{d}: not a complete {cls.name} router artifact ({e}); re-save it") from e
        router.manifest = manifest
        return router


# ------------------------------------------------------------------------------------------- no learning --------
class _OnePointSweep:
    """For the routers whose choice does not depend on the willingness to pay: their sweep is one point."""

    def sweep(self, pred: Predictions, wtps: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([np.nan]), np.asarray(self.choose(pred, 1.0), dtype=int)[None, :]


class SingleModelRouter(_OnePointSweep, ScoreRouter):
    """Always the same LLM (the others are ineligible, with the reason in the trace). `fit` learns the log's LLMs
    and their mean quality and cost, shown in the trace; they do not change the choice."""

    name: ClassVar[str] = "single"
    kind: ClassVar[str] = "single"
    params: ClassVar[tuple[str, ...]] = ("model", "seed")

    def __init__(self, model: str, seed: int = 0, catalogue: Catalogue | None = None) -> None:
        super().__init__(seed, catalogue)
        self.model = model

    def fit(self, log: pd.DataFrame) -> "SingleModelRouter":
        train = self._learned(log)
        if self.model not in train.models:
            raise TrainingError(f"the single-model router's LLM {self.model!r} has no rows in the log "
                                f"(models: {', '.join(train.models)})")
        everything = np.ones((1, train.n))
        self._mean_q = _weighted_mean(everything, train.quality)[0]
        self._mean_c = _weighted_mean(everything, train.cost)[0]
        return self

    def _estimates(self, prompts, tokens, tasks):
        n = len(prompts)
        return np.tile(self._mean_q, (n, 1)), np.tile(self._mean_c, (n, 1))

    def _eligible(self, cost, constraints):
        ok, reasons = super()._eligible(cost, constraints)
        only = np.array([m == self.model for m in self.models])
        for r in reasons:
            r.update({j: f"the single-model router always uses {self.model}" for j in np.nonzero(~only)[0]})
        return ok & only, reasons

    @property
    def note(self) -> str:
        return f"always {self.model}"

    def _state(self):
        return {}, {"mean_quality": self._mean_q, "mean_cost": self._mean_c}

    def _restore(self, facts, arrays):
        self._mean_q, self._mean_c = arrays["mean_quality"], arrays["mean_cost"]

    @classmethod
    def for_evaluation(cls, train_log, test_log, *, seed=0, **options):
        """One router per LLM of the test log (fitted on the test log: it only reads which LLMs there are)."""
        return {f"single:{m}": cls(m, seed=seed).fit(test_log) for m in TestSet.from_log(test_log).models}


class RandomRouter(_OnePointSweep, ScoreRouter):
    """A uniform random LLM per prompt, drawn from the router's generator (seeded; `predict` advances it). The
    predicted quality is 1 for the drawn LLM and 0 for the others: the trace says what was drawn, not a forecast."""

    name: ClassVar[str] = "random"

    def fit(self, log: pd.DataFrame) -> "RandomRouter":
        self._learned(log)
        self._rng = None  # a refit starts the seeded stream again
        return self

    def _estimates(self, prompts, tokens, tasks):
        n, m = len(prompts), len(self._models)
        q = np.zeros((n, m))
        q[np.arange(n), self.rng.integers(0, m, size=n)] = 1.0
        return q, np.zeros((n, m))

    @property
    def note(self) -> str:
        return f"uniform random LLM per query, seed {self.seed}"

    @classmethod
    def for_evaluation(cls, train_log, test_log, *, seed=0, **options):
        return {cls.name: cls(seed=seed).fit(test_log)}


class OracleRouter(ScoreRouter):
    """The true outcomes of a full-information log (every LLM answered every query): an upper bound, not a router
    one can serve on new traffic. Contract: the log is given at construction (or to `fit`, which replaces it);
    `predict` answers only prompts of that log (by prompt text; a prompt logged under several query ids gets its
    mean outcome) and raises RoutingError naming the first unlabelled prompt otherwise. Unknown quality counts as 0,
    as in the evaluation."""

    name: ClassVar[str] = "oracle"

    def __init__(self, log: pd.DataFrame | None = None, seed: int = 0, catalogue: Catalogue | None = None) -> None:
        super().__init__(seed, catalogue)
        self._row: dict[str, int] = {}
        if log is not None:
            self.fit(log)

    def fit(self, log: pd.DataFrame) -> "OracleRouter":
        truth = self._learned(log, unknown_quality="zero")
        frame = pd.DataFrame({"prompt": truth.prompts})
        groups = frame.groupby("prompt", sort=False).indices
        self._prompts = list(groups)
        self._row = {p: i for i, p in enumerate(self._prompts)}
        self._q = np.stack([truth.quality[idx].mean(axis=0) for idx in groups.values()])
        self._c = np.stack([truth.cost[idx].mean(axis=0) for idx in groups.values()])
        return self

    def _estimates(self, prompts, tokens, tasks):
        missing = [p for p in prompts if p not in self._row]
        if missing:
            raise RoutingError(f"the oracle has no labels for {len(missing)} of {len(prompts)} prompts (first: "
                               f"{missing[0][:80]!r}); it only routes prompts of the log it was given")
        rows = [self._row[p] for p in prompts]
        return self._q[rows], self._c[rows]

    @property
    def note(self) -> str:
        return "true quality and cost (upper bound)"

    def _state(self):
        return {"prompts": self._prompts}, {"quality": self._q, "cost": self._c}

    def _restore(self, facts, arrays):
        self._prompts = list(facts["prompts"])
        self._row = {p: i for i, p in enumerate(self._prompts)}
        self._q, self._c = arrays["quality"], arrays["cost"]

    @classmethod
    def for_evaluation(cls, train_log, test_log, *, seed=0, **options):
        return {cls.name: cls(test_log, seed=seed)}


# ------------------------------------------------------------------------------------------- learned from train --
class TaskPriorRouter(ScoreRouter):
    """Per-task mean quality and cost of each LLM on the train log (unknown quality ignored); a prompt without a
    task, or of a task the log has not seen, gets the means over all train queries. Needs `tasks=` in predict."""

    name: ClassVar[str] = "task_prior"

    def fit(self, log: pd.DataFrame) -> "TaskPriorRouter":
        train = self._learned(log)
        everything = np.ones((1, train.n))
        self._global = (_weighted_mean(everything, train.quality)[0], _weighted_mean(everything, train.cost)[0])
        self._per_task = {}
        for t in np.unique(train.tasks):
            rows = (train.tasks == t)[None, :].astype(float)
            self._per_task[str(t)] = (_weighted_mean(rows, train.quality)[0], _weighted_mean(rows, train.cost)[0])
        return self

    def _estimates(self, prompts, tokens, tasks):
        tasks = tasks if tasks is not None else [None] * len(prompts)
        pairs = [self._per_task.get(str(t), self._global) if t is not None else self._global for t in tasks]
        return np.array([q for q, _ in pairs]).reshape(len(prompts), -1), \
            np.array([c for _, c in pairs]).reshape(len(prompts), -1)

    @property
    def note(self) -> str:
        return "per-task mean quality and cost per LLM from train"

    def _state(self):
        names = sorted(self._per_task)
        arrays = {"global_q": self._global[0], "global_c": self._global[1],
                  "task_q": np.array([self._per_task[t][0] for t in names]).reshape(len(names), -1),
                  "task_c": np.array([self._per_task[t][1] for t in names]).reshape(len(names), -1)}
        return {"tasks": names}, arrays

    def _restore(self, facts, arrays):
        self._global = (arrays["global_q"], arrays["global_c"])
        self._per_task = {t: (arrays["task_q"][i], arrays["task_c"][i]) for i, t in enumerate(facts["tasks"])}


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


class KNNRouter(ScoreRouter):
    """RouterBench's KNN router: mean quality and cost of each LLM over the k most similar train prompts.

    Ties at the k-th similarity are all included, so the result does not depend on row order. (On RouterBench's
    few-shot prompts the truncated embedding of every ARC or Winogrande query is the same, so there KNN reduces
    to the per-task mean; only MBPP gets per-query neighbours.) `embed`: the prompt encoder (default plain MiniLM).
    """

    name: ClassVar[str] = "knn"
    params: ClassVar[tuple[str, ...]] = ("k", "seed")

    def __init__(self, k: int = 20, seed: int = 0, catalogue: Catalogue | None = None,
                 embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> None:
        super().__init__(seed, catalogue)
        self.k = k
        self.embed = embed or plain_embeddings

    def fit(self, log: pd.DataFrame) -> "KNNRouter":
        train = self._learned(log)
        self._emb, self._q, self._c = np.asarray(self.embed(train.prompts)), train.quality, train.cost
        return self

    def _estimates(self, prompts, tokens, tasks):
        k = min(self.k, len(self._emb))
        sims = np.asarray(self.embed(prompts)) @ self._emb.T
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1:k]
        weights = (sims >= kth - 1e-6).astype(float)
        return _weighted_mean(weights, self._q), _weighted_mean(weights, self._c)

    @property
    def note(self) -> str:
        return f"{self.k} nearest train queries (ties included), plain MiniLM"

    def _state(self):
        return {}, {"embeddings": self._emb, "quality": self._q, "cost": self._c}

    def _restore(self, facts, arrays):
        self._emb, self._q, self._c = arrays["embeddings"], arrays["quality"], arrays["cost"]

    @classmethod
    def for_evaluation(cls, train_log, test_log, *, seed=0, k: int = 20, **options):
        router = super().for_evaluation(train_log, test_log, seed=seed, k=k, **options)[cls.name]
        return {f"knn{router.k}": router}


class _LGBMRouter(ScoreRouter):
    """One LightGBM success classifier per LLM on `_features` (labels: quality >= 0.5, unknown skipped; a constant
    when an LLM always or never succeeds); cost = a + b x prompt tokens per LLM (least squares)."""

    def fit(self, log: pd.DataFrame) -> "_LGBMRouter":
        import lightgbm as lgb

        train = self._learned(log)
        x = self._fit_features(train.prompts)
        self._models_q: list[Any] = []
        for j in range(len(train.models)):
            known = np.isfinite(train.quality[:, j])
            y = train.quality[known, j] >= 0.5
            if y.all() or not y.any():
                self._models_q.append(float(y.mean()))
                continue
            clf = lgb.LGBMClassifier(n_estimators=100, learning_rate=0.05, num_leaves=15, n_jobs=1, verbose=-1,
                                     random_state=self.seed)
            self._models_q.append(clf.fit(x[known], y).booster_)
        tokens = np.column_stack([np.ones(train.n), np.nan_to_num(train.prompt_tokens)])
        self._cost_coef, *_ = np.linalg.lstsq(tokens, train.cost, rcond=None)
        return self

    def _estimates(self, prompts, tokens, tasks):
        x = self._features(prompts)
        q = np.column_stack([np.full(len(prompts), m) if isinstance(m, float) else m.predict(x)
                             for m in self._models_q])
        return q, np.column_stack([np.ones(len(tokens)), np.nan_to_num(tokens)]) @ self._cost_coef

    def _fit_features(self, prompts: list[str]) -> Any:
        return self._features(prompts)

    def _features(self, prompts: list[str]) -> Any:
        raise NotImplementedError

    def _state(self):
        facts = {"quality_models": [m if isinstance(m, float) else m.model_to_string() for m in self._models_q]}
        return facts, {"cost_coef": self._cost_coef}

    def _restore(self, facts, arrays):
        import lightgbm as lgb

        self._models_q = [m if isinstance(m, float) else lgb.Booster(model_str=m) for m in facts["quality_models"]]
        self._cost_coef = arrays["cost_coef"]


class LGBMRouter(_LGBMRouter):
    """LightGBM per LLM on plain MiniLM embeddings (`embed`: the prompt encoder, default plain MiniLM)."""

    name: ClassVar[str] = "lgbm"

    def __init__(self, seed: int = 0, catalogue: Catalogue | None = None,
                 embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> None:
        super().__init__(seed, catalogue)
        self.embed = embed or plain_embeddings

    def _features(self, prompts):
        return np.asarray(self.embed(prompts), np.float64)

    @property
    def note(self) -> str:
        return "LightGBM per LLM on plain MiniLM embeddings; linear cost model"


class TfidfLGBMRouter(_LGBMRouter):
    """LightGBM per LLM on TF-IDF features (the cheap non-neural learned router)."""

    name: ClassVar[str] = "tfidf_lgbm"
    _VECTORIZER: ClassVar[dict] = {"max_features": 5000, "sublinear_tf": True, "ngram_range": (1, 2), "min_df": 2}

    def _fit_features(self, prompts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vec = TfidfVectorizer(**self._VECTORIZER)
        return self._vec.fit_transform(prompts)

    def _features(self, prompts):
        return self._vec.transform(prompts)

    @property
    def note(self) -> str:
        return "LightGBM per LLM on TF-IDF; linear cost model"

    def _state(self):
        facts, arrays = super()._state()
        vocab = sorted(self._vec.vocabulary_, key=self._vec.vocabulary_.get)
        return facts | {"vocabulary": vocab}, arrays | {"idf": self._vec.idf_}

    def _restore(self, facts, arrays):
        from sklearn.feature_extraction.text import TfidfVectorizer

        super()._restore(facts, arrays)
        params = {k: v for k, v in self._VECTORIZER.items() if k not in ("max_features", "min_df")}
        self._vec = TfidfVectorizer(**params, vocabulary={t: i for i, t in enumerate(facts["vocabulary"])})
        self._vec.idf_ = arrays["idf"]


class MLPRouter(ScoreRouter):
    """RouterBench's MLP quality predictor, re-implemented on our features: one multi-output MLP (sklearn
    `MLPRegressor`, ReLU hidden layer, early stopping on a seeded 10% split) from plain MiniLM embeddings to every
    LLM's quality at once (an unknown cell takes the LLM's mean), clipped to [0, 1]; cost = a + b x prompt tokens
    per LLM (least squares). The stronger published router of the evaluation: unlike kNN it learns which directions
    of the embedding matter, unlike per-LLM trees it shares one representation across LLMs. Inference is a numpy
    forward pass over the saved weights (no sklearn object in the artifact)."""

    name: ClassVar[str] = "mlp"
    params: ClassVar[tuple[str, ...]] = ("hidden", "alpha", "seed")

    def __init__(self, hidden: int = 128, alpha: float = 1e-3, seed: int = 0, catalogue: Catalogue | None = None,
                 embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> None:
        super().__init__(seed, catalogue)
        self.hidden, self.alpha = hidden, alpha
        self.embed = embed or plain_embeddings

    def fit(self, log: pd.DataFrame) -> "MLPRouter":
        from sklearn.neural_network import MLPRegressor

        train = self._learned(log)
        x = np.asarray(self.embed(train.prompts), np.float64)
        mean = np.nan_to_num(np.nanmean(np.where(np.isfinite(train.quality), train.quality, np.nan), axis=0))
        y = np.where(np.isfinite(train.quality), train.quality, mean)
        mlp = MLPRegressor(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, early_stopping=True,
                           validation_fraction=0.1, n_iter_no_change=10, max_iter=300, random_state=self.seed)
        mlp.fit(x, y)
        self._weights = [np.asarray(w) for w in mlp.coefs_]
        self._biases = [np.asarray(b) for b in mlp.intercepts_]
        tokens = np.column_stack([np.ones(train.n), np.nan_to_num(train.prompt_tokens)])
        self._cost_coef, *_ = np.linalg.lstsq(tokens, train.cost, rcond=None)
        return self

    def _estimates(self, prompts, tokens, tasks):
        h = np.asarray(self.embed(prompts), np.float64)
        for i, (w, b) in enumerate(zip(self._weights, self._biases)):
            h = h @ w + b
            if i < len(self._weights) - 1:
                h = np.maximum(h, 0.0)
        q = np.clip(h.reshape(len(prompts), -1), 0.0, 1.0)
        return q, np.column_stack([np.ones(len(tokens)), np.nan_to_num(tokens)]) @ self._cost_coef

    @property
    def note(self) -> str:
        return f"MLP ({self.hidden} ReLU units) on plain MiniLM -> every LLM's quality; linear cost model"

    def _state(self):
        arrays = {f"w{i}": w for i, w in enumerate(self._weights)} | {f"b{i}": b for i, b in enumerate(self._biases)}
        return {"layers": len(self._weights)}, arrays | {"cost_coef": self._cost_coef}

    def _restore(self, facts, arrays):
        self._weights = [arrays[f"w{i}"] for i in range(facts["layers"])]
        self._biases = [arrays[f"b{i}"] for i in range(facts["layers"])]
        self._cost_coef = arrays["cost_coef"]
