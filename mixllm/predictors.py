"""Per-LLM predictors: a quality model (`QualityModel`: kNN memory, LightGBM or a constant) and a LightGBM
response-length (or cost) model for each LLM.

Why per LLM: adding an LLM to the catalogue trains only its two models; removing one drops them; the others are
untouched (same objects). Predicted cost = prompt tokens x input price + predicted completion tokens x output price,
which uses the catalogue's prices (a price change needs no retrain). When a log has no token counts for an LLM, a
cost model is learned from `cost_usd` instead. Rows with a null quality are skipped for that LLM's quality model.
Rows a logging policy chose (a `propensity`) weigh 1 / max(propensity, clip) everywhere (`row_weights`).

Quality = local evidence shrunk to the tag prior (default, `quality_model="knn"`): an LLM's predicted quality on a
query is the mean of its observed quality over the k most similar training queries of the same (predicted) tag,
shrunk toward its smoothed per-tag mean with `knn_smoothing` pseudo-rows: (sum of neighbour labels + s x prior) /
(known neighbour labels + s), an empirical-Bayes local average. Why not trees: on RouterBench the per-query signal
is weak; 3-fold CV on train (folds by query, 3 fold seeds: `bench/tune.py --experiment quality_model`, table in
`bench/results/tune.md`) has LightGBM deviations from the prior LOSING to the prior itself (AIQ 0.9612 vs 0.9636),
while the shrunk kNN average ties the per-task prior (0.9636 vs 0.9633) and needs no task labels. The memory is the
LLM's own rows (its embeddings, labels and tags), so adding an LLM still trains only that LLM. Neighbour search is
one product and one partial sort per bank for all LLMs trained together (each LLM's k nearest among its own rows:
`_KNNGroup`), over the rows of the query's tag only (each tag's rows kept as one contiguous block, so a query reads
a fraction of the memory).

Boosting from the tag prior (`quality_model="lgbm"`): each quality model starts from the LLM's (smoothed) mean quality on the query's tag
(LightGBM `init_score`, in logit space for 0/1 labels) and its trees only learn deviations from it. Why: on
RouterBench, a router told each query's dataset (per-task means) beat LightGBM trained from scratch on the same
features in cross-validation on train (log loss 0.576 vs 0.589, quality@25% cost 94.9% vs 93.3%): per-query
signal is weak, and trees from scratch spend their capacity re-learning the tag means noisily. At inference the
tag is the router's predicted one (nearest tag centroid), the same as used to build the training base scores.

Speed: the router predicts all prompts of a request in one call per model, on raw numpy, single-threaded (many small
models side by side on 2 cores). A one-prompt request (the service's common case) goes through LightGBM's single-row
fast C API instead (`LGBM_BoosterPredictForMatSingleRowFast`, prepared once per booster): ~8 us per call instead of
~27 us for `Booster.predict`, whose per-call parameter parsing dominates on one row; 22 calls per query add up.
The length models of all LLMs share one conversion of the row (`_predict_each`), and LLMs whose kNN memory is the
whole bank search it without a column copy: predictors per query 0.59 -> 0.55 ms in-process.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mixllm.catalogue import LLMSpec
from mixllm.exceptions import ArtifactError, TrainingError


class PredictorConfig(BaseModel):
    """LightGBM hyper-parameters shared by every per-LLM model (small trees, strong regularisation: ~2k rows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(default=200, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    num_leaves: int = Field(default=7, ge=2)
    min_child_samples: int = Field(default=40, ge=1)
    feature_fraction: float = Field(default=0.8, gt=0, le=1)
    bagging_fraction: float = Field(default=0.8, gt=0, le=1)
    lambda_l2: float = Field(default=1.0, ge=0)
    max_bin: int = Field(default=63, ge=2, description="Histogram bins per feature of the LightGBM models: 63, "
                         "not LightGBM's 255, for speed (at 36k rows 0.70 -> 0.57 CPU s per LLM; AIQ on the "
                         "RouterBench test split 0.9759 +- 0.0007 -> 0.9760 +- 0.0004 over 3 seeds: not tuned on it).")
    min_rows: int = Field(default=2, ge=1, description="Fewer labelled rows than this for an LLM is an error.")
    quality_model: Literal["knn", "lgbm", "blend"] = Field(
        default="knn", description="knn: neighbour average shrunk to the tag prior; lgbm: trees boosted from the tag "
        "prior (from the global mean with tag_prior=False); blend: both, mixed by blend_knn_weight (BlendQuality).")
    blend_knn_weight: float = Field(default=0.5, ge=0, le=1, description="quality_model='blend': weight of the kNN "
                                    "estimate, 1 - it of the trees' (CV on train: bench/tune.py).")
    knn_k: int = Field(default=150, ge=1, description="Neighbours (same predicted tag) per query (CV on train).")
    knn_smoothing: float = Field(default=60.0, ge=0, description="Pseudo-rows of the tag prior in the neighbour "
                                 "average (CV on train).")
    quality_n_estimators: int | None = Field(default=10, ge=1, description="Trees of the lgbm quality models (None: "
                                             "n_estimators); few, as they boost from the tag prior (CV on train).")
    tag_prior: bool = Field(default=True, description="Boost the quality model from the per-tag mean quality.")
    prior_smoothing: float = Field(default=5.0, ge=0, description="Pseudo-rows of the global mean in a tag's mean.")
    propensity_clip: float = Field(default=0.05, gt=0, le=1, description="Rows a policy chose with propensity p "
                                   "weigh 1 / max(p, clip) (bandit logs; see row_weights).")
    bandit_labels: Literal["ips", "residual", "relative"] = Field(
        default="residual", description="How rows a logging policy chose train an LLM that also has "
        "full-information rows: ips: they join its model, weighted; residual: they only correct it (see fit_llm "
        "and bench/loop_offline_dr.py); relative: they correct it by what it did better or worse than the models "
        "logged on similar queries (PredictorBank.relate).")
    relative_k: int = Field(default=20, ge=1, description="Logged neighbours (same tag, any LLM) whose mean "
                            "residual is a query's shared difficulty (bandit_labels='relative').")
    residual_smoothing: float = Field(default=200.0, ge=0, description="Pseudo-rows of zero correction in an "
                                      "LLM's per-tag mean residual (bandit_labels='residual'). 200, not 20: "
                                      "routing at a fixed willingness to pay flips on small quality shifts, and "
                                      "per-tag corrections from ~50-170 selected rows carry the queries the policy "
                                      "chose them on; on bench/loop_offline_dr.py's split 1 (validation part of "
                                      "train) 20 cost -0.106 utility against the seed, 200 +0.002; over 4 "
                                      "re-splits of train x 420/1,470/4,200 labels (bench/loop_offline_rules.py) "
                                      "200 had the best mean validation utility at every volume (+0.002 / +0.001 "
                                      "/ +0.004 vs seed), 50 and 20 lost 0.011-0.034, empirical_bayes 0.04-0.13.")
    residual_shrinkage: Literal["pseudo_rows", "empirical_bayes"] = Field(
        default="pseudo_rows", description="How a residual correction is shrunk: pseudo_rows: by "
        "residual_smoothing pseudo-rows of zero (global) or of the global correction (per tag); empirical_bayes: "
        "each by its own standard error (the global one positive-part James-Stein toward 0, the per-tag ones toward "
        "the global with the between-tag variance estimated by moments: _eb_means).")

    def params(self, objective: str, seed: int) -> dict:
        return {"objective": objective, "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_data_in_leaf": self.min_child_samples, "feature_fraction": self.feature_fraction,
                "bagging_fraction": self.bagging_fraction, "bagging_freq": 1, "lambda_l2": self.lambda_l2,
                "max_bin": self.max_bin,
                "num_threads": 1, "verbosity": -1, "seed": seed, "deterministic": True,
                "force_row_wise": True}


def _train(x: np.ndarray, y: np.ndarray, objective: str, cfg: PredictorConfig, seed: int,
           init: np.ndarray | None = None, rounds: int | None = None,
           weight: np.ndarray | None = None) -> lgb.Booster | float:
    """A booster, or the constant mean when the target does not vary (e.g. an LLM that always succeeds).
    `weight`: per-row sample weights (inverse propensities of a bandit log; None: every row counts once)."""
    if len(np.unique(y)) < 2:
        return float(y[0])
    min_leaf = max(1, min(cfg.min_child_samples, len(y) // 4))
    params = cfg.params(objective, seed) | {"min_data_in_leaf": min_leaf}
    if init is not None:
        params["boost_from_average"] = False
    data = lgb.Dataset(x, label=y, init_score=init, weight=weight, params={"verbosity": -1, "max_bin": cfg.max_bin})
    return lgb.train(params, data, num_boost_round=rounds or cfg.n_estimators)


class _SingleRow:
    """LightGBM's fast single-row prediction for one booster (a prepared C-API FastConfig; the booster is kept alive
    by it). One lock per booster: a FastConfig owns one output buffer, so calls from two threads must not overlap."""

    _NORMAL, _RAW, _FLOAT64 = 0, 1, 1

    def __init__(self, booster: lgb.Booster, raw: bool) -> None:
        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._lib, self._check, self._booster = _LIB, _safe_call, booster
        self._handle = ctypes.c_void_p()
        self._ncol = booster.num_feature()
        self._check(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(self._RAW if raw else self._NORMAL), ctypes.c_int(0), ctypes.c_int(-1),
            ctypes.c_int(self._FLOAT64), ctypes.c_int32(self._ncol), _c_str("num_threads=1"),
            ctypes.byref(self._handle)))
        self._out, self._len, self._lock = np.zeros(1), ctypes.c_int64(), threading.Lock()
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))

    def __call__(self, row: np.ndarray) -> float:
        row = np.ascontiguousarray(row, dtype=np.float64)
        return self.at(row.ctypes.data_as(ctypes.c_void_p), row.shape)

    def at(self, ptr: ctypes.c_void_p, shape: tuple[int, ...]) -> float:
        """The prediction for the contiguous float64 row of this `shape` at `ptr` (prepared once by the caller when
        several boosters predict the same row)."""
        if shape != (self._ncol,):
            raise ValueError(f"expected {self._ncol} features, got shape {shape}")
        with self._lock:
            self._check(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                self._handle, ptr, ctypes.byref(self._len), self._out_ptr))
            return float(self._out[0])

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and self._handle.value is not None:
            self._lib.LGBM_FastConfigFree(self._handle)


# The LightGBM releases `_SingleRow` was checked against (`Booster.predict` on random rows, tests/unit/
# test_predictors.py): it calls the private C API through `lightgbm.basic`, which a release may change. pyproject pins
# lightgbm to this version; any other version predicts through the public `Booster.predict` instead.
VERIFIED_LIGHTGBM = ("4.7.0",)
FAST_SINGLE_ROW = lgb.__version__ in VERIFIED_LIGHTGBM

_SINGLE_ROW: "weakref.WeakKeyDictionary[lgb.Booster, dict[bool, _SingleRow]]" = weakref.WeakKeyDictionary()
_SINGLE_ROW_LOCK = threading.Lock()


def _single_row(model: lgb.Booster, raw: bool) -> _SingleRow:
    """The booster's prepared single-row predictor (built on first use; boosters stay picklable, nothing is
    attached to them)."""
    with _SINGLE_ROW_LOCK:
        per = _SINGLE_ROW.setdefault(model, {})
        if raw not in per:
            per[raw] = _SingleRow(model, raw)
        return per[raw]


def _predict(model: lgb.Booster | float, x: np.ndarray, base: np.ndarray | None = None,
             kind: str = "regression") -> np.ndarray:
    """Model output; with `base` (the init score it was trained from), raw trees + base, then the link."""
    if isinstance(model, float):
        return np.full(len(x), model)
    if len(x) == 1 and FAST_SINGLE_ROW:
        out = np.array([_single_row(model, raw=base is not None)(x[0])])
    else:
        out = model.predict(x, raw_score=base is not None, num_threads=1)
    if base is None:
        return out
    raw = out + base
    return 1.0 / (1.0 + np.exp(-raw)) if kind == "binary" else raw


def _predict_each(models: list[lgb.Booster | float], x: np.ndarray) -> np.ndarray:
    """[n, len(models)]: the outputs of several models on the same rows x (no init score). One row: converted and
    its pointer taken once for every model's single-row fast call, not once per model (that conversion was about
    half of each ~20 us call)."""
    if len(x) != 1 or not FAST_SINGLE_ROW:
        return np.column_stack([_predict(m, x) for m in models]) if models else np.empty((len(x), 0))
    row = np.ascontiguousarray(x[0], dtype=np.float64)
    ptr = row.ctypes.data_as(ctypes.c_void_p)
    return np.array([[m if isinstance(m, float) else _single_row(m, raw=False).at(ptr, row.shape)
                      for m in models]], dtype=float).reshape(1, len(models))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.01, 0.99)
    return np.log(p / (1 - p))


def tag_prior(y: np.ndarray, tags: np.ndarray, smoothing: float, weight: np.ndarray | None = None) -> dict:
    """{"global": mean, "tags": {tag: smoothed mean}} of labels y by tag (the quality models' starting point).

    With `weight` (inverse propensities): weighted means, each tag's shrunk to the global one by its effective
    sample size (sum w)^2 / sum w^2, not by sum w: twenty rows a policy rarely chose are still twenty rows."""
    if weight is None:
        mean = float(np.mean(y))
        out = {}
        for t in np.unique(tags):
            v = y[tags == t]
            out[str(t)] = float((v.sum() + smoothing * mean) / (len(v) + smoothing))
        return {"global": mean, "tags": out}
    mean = float(np.sum(weight * y) / np.sum(weight))
    out = {}
    for t in np.unique(tags):
        sel = tags == t
        out[str(t)] = float(shrunk_mean(y[sel][None, :], weight[sel][None, :], smoothing, np.array([mean]))[0])
    return {"global": mean, "tags": out}


def row_weights(rows: pd.DataFrame, clip: float) -> np.ndarray | None:
    """Per-row training weight: 1 / max(propensity, clip) for a row a logging policy chose with that propensity,
    1 for a full-information row (propensity null); None when no row has a propensity (every row counts once).

    Why: in the service's own log an LLM's outcomes are seen mostly on the queries the router already sent it,
    i.e. where it was predicted to be good; counting them as a random sample overrates it. Inverse-propensity
    weights undo that selection; the clip bounds the weight of a rare choice (variance) at the price of some bias."""
    if "propensity" not in rows:
        return None
    p = pd.to_numeric(rows["propensity"], errors="coerce").to_numpy(float)
    if np.isnan(p).all():
        return None
    bad = ~np.isnan(p) & ((p <= 0) | (p > 1))
    if bad.any():
        raise TrainingError(f"{int(bad.sum())} rows have a propensity outside (0, 1] (e.g. {p[bad][0]}); a "
                            "propensity is the probability the logging policy chose that model")
    return np.where(np.isnan(p), 1.0, 1.0 / np.maximum(p, clip))


def shrunk_mean(y: np.ndarray, weight: np.ndarray, smoothing: float | np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Weighted mean of y over axis 1 (NaN or zero-weight entries left out), shrunk to `prior` with `smoothing`
    pseudo-rows against the effective sample size n_eff = (sum w)^2 / sum w^2: (n_eff x mean + s x prior) /
    (n_eff + s); the prior alone where nothing is known. Unit weights give the plain shrunk mean."""
    w = np.where(np.isnan(y), 0.0, weight)
    sw, sw2 = w.sum(1), (w * w).sum(1)
    mean = np.divide((w * np.nan_to_num(y)).sum(1), sw, out=np.zeros(sw.shape), where=sw > 0)
    n_eff = np.divide(sw * sw, sw2, out=np.zeros(sw.shape), where=sw2 > 0)
    total, count = n_eff * mean + smoothing * prior, n_eff + smoothing
    return np.divide(total, count, out=np.broadcast_to(prior, total.shape).astype(float).copy(), where=count > 0)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class QualityModel(ABC):
    """One LLM's quality model: what `LLMPredictor` asks of it, whatever it is (a constant, LightGBM trees boosted
    from the tag prior, a kNN memory). `output` is the raw estimate (not yet clipped to [0, 1]); `entry` saves it
    under `stem` in `path` and returns the index entry `load_quality` reads back."""

    @abstractmethod
    def output(self, x: np.ndarray, tags: np.ndarray | None, emb: np.ndarray | None,
               llm: "LLMPredictor") -> np.ndarray: ...

    @abstractmethod
    def entry(self, path: Path, stem: str, banks: dict[int, str]) -> dict: ...


@dataclass
class ConstantQuality(QualityModel):
    """The same quality for every query (an LLM whose labels never vary)."""

    value: float

    def output(self, x, tags, emb, llm):
        return np.full(len(x), self.value)

    def entry(self, path, stem, banks):
        return {"constant": self.value}


@dataclass
class LGBMQuality(QualityModel):
    """LightGBM trees on the query features, boosted from the LLM's tag prior when it has one (the base score is
    added back here, then the link). One row goes through the fast single-row path (`_single_row`)."""

    booster: lgb.Booster

    def output(self, x, tags, emb, llm):
        return _predict(self.booster, x, llm.prior(tags, len(x)), llm.quality_kind)

    def entry(self, path, stem, banks):
        self.booster.save_model(str(path / f"{stem}.txt"))
        return {"file": f"{stem}.txt"}


@dataclass
class KNNQuality(QualityModel):
    """One LLM's neighbour memory: `bank` rows (unit vectors, possibly shared with other LLMs) at `cols`, with the
    LLM's label (NaN: unknown, takes a neighbour slot but no weight), tag and training weight per row (`w`: inverse
    propensities of a bandit log; None: every row counts once)."""

    bank: np.ndarray
    cols: np.ndarray
    y: np.ndarray
    tags: np.ndarray | None  # None: the memory has no tags (no tag restriction)
    k: int
    smoothing: float
    w: np.ndarray | None = None

    def __post_init__(self) -> None:
        names, codes = np.unique(self.tags.astype(str), return_inverse=True) if self.tags is not None else ([], None)
        self._code = {str(t): i for i, t in enumerate(names)}
        self._codes = codes

    def neighbours(self, sims: np.ndarray, tags: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k memory rows per query among rows of the query's tag (`sims`: query x memory rows); a query
        whose tag the memory has not seen gets no neighbour (its estimate is the prior)."""
        if tags is not None and self._codes is not None:
            want = np.array([self._code.get(str(t), -1) for t in tags])
            sims = np.where(self._codes[None, :] == want[:, None], sims, -np.inf)
        k = min(self.k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
            np.broadcast_to(np.arange(k), (len(sims), k))
        return idx, np.isfinite(np.take_along_axis(sims, idx, 1))

    def estimate(self, idx: np.ndarray, valid: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """(sum of known neighbour labels + s x prior) / (known neighbours + s); the prior alone without any.
        Weighted memory: the weighted neighbour mean shrunk by its effective sample size (`shrunk_mean`)."""
        y = self.y[idx]
        if self.w is not None:
            return shrunk_mean(np.where(valid, y, np.nan), self.w[idx], self.smoothing, prior)
        known = valid & ~np.isnan(y)
        total = np.where(known, y, 0.0).sum(1) + self.smoothing * prior
        count = known.sum(1) + self.smoothing
        return np.divide(total, count, out=prior.astype(float).copy(), where=count > 0)

    def predict(self, emb: np.ndarray, tags: np.ndarray | None, prior: np.ndarray) -> np.ndarray:
        idx, valid = self.neighbours(_unit(emb) @ self.bank[self.cols].T, tags)
        return self.estimate(idx, valid, prior)

    def output(self, x, tags, emb, llm):
        return self.predict(x if emb is None else emb, tags, llm.prior_mean(tags, len(x)))

    def entry(self, path, stem, banks):
        arrays = {"cols": self.cols, "y": self.y,
                  "tags": np.array([] if self.tags is None else self.tags.astype(str), dtype=str)}
        if self.w is not None:
            arrays["w"] = self.w
        np.savez(path / f"{stem}.npz", **arrays)
        return {"knn": f"{stem}.npz", "bank": banks[id(self.bank)], "k": self.k, "smoothing": self.smoothing,
                "tagged": self.tags is not None}


@dataclass
class BlendQuality(QualityModel):
    """A weighted mean of a kNN memory's estimate and trees' (`quality_model="blend"`). Why: the shrunk neighbour
    average is local and tag-bound, LightGBM on the features is global and sees the tag similarities as soft
    features; their errors might differ. Cross-validation on train did not bear that out (bench/tune.py
    --experiment quality_blend, both datasets x both conditions: best blend 0.75 kNN + 300 trees, four-cell mean
    AIQ 1.0028 vs kNN alone 1.0032), so it is an option, not the default. The kNN part searches per LLM (not
    through `_KNNGroup`): a bank no grouped memory saved is saved here."""

    knn: KNNQuality
    trees: QualityModel
    knn_weight: float

    def output(self, x, tags, emb, llm):
        w = self.knn_weight
        return w * self.knn.output(x, tags, emb, llm) + (1.0 - w) * self.trees.output(x, tags, emb, llm)

    def entry(self, path, stem, banks):
        if id(self.knn.bank) not in banks:
            np.save(path / f"{stem}.bank.npy", self.knn.bank, allow_pickle=False)
            banks[id(self.knn.bank)] = f"{stem}.bank.npy"
        return {"blend": self.knn_weight, "knn_part": self.knn.entry(path, f"{stem}.knn", banks),
                "trees_part": self.trees.entry(path, f"{stem}.trees", banks)}


def load_quality(path: Path, entry: dict, banks: dict[str, np.ndarray]) -> QualityModel:
    """The quality model an index entry names (kNN banks loaded once, shared)."""
    if "blend" in entry:
        return BlendQuality(load_quality(path, entry["knn_part"], banks),
                            load_quality(path, entry["trees_part"], banks), float(entry["blend"]))
    if "constant" in entry:
        return ConstantQuality(float(entry["constant"]))
    if "knn" in entry:
        if entry["bank"] not in banks:
            banks[entry["bank"]] = np.load(path / entry["bank"], allow_pickle=False)
        with np.load(path / entry["knn"], allow_pickle=False) as f:
            tags = f["tags"].astype(object) if entry["tagged"] else None
            return KNNQuality(banks[entry["bank"]], f["cols"], f["y"], tags, int(entry["k"]),
                              float(entry["smoothing"]), f["w"] if "w" in f.files else None)
    return LGBMQuality(lgb.Booster(model_file=str(path / entry["file"])))


@dataclass
class LLMPredictor:
    """The two models of one LLM. `target` says whether the second model predicts tokens or cost."""

    name: str
    quality: QualityModel
    quality_kind: str  # "binary" (0/1 labels, probability) or "regression" (graded labels, clipped to [0, 1])
    length: lgb.Booster | float
    target: str  # "tokens": log1p(completion tokens); "cost": log1p(cost in micro-dollars)
    n_rows: int = 0
    meta: dict = field(default_factory=dict)

    def prior(self, tags: np.ndarray | None, n: int) -> np.ndarray | None:
        """Per-row base score of the quality model (None when it was trained without a tag prior)."""
        if self.meta.get("tag_prior") is None:
            return None
        mean = self.prior_mean(tags, n)
        return _logit(mean) if self.quality_kind == "binary" else mean

    def correction(self, tags: np.ndarray | None, n: int) -> np.ndarray:
        """Per-row additive quality correction learned from logged decisions (`residual_correction`; 0 without)."""
        r = self.meta.get("residual")
        if not r:
            return np.zeros(n)
        tags = np.full(n, None) if tags is None else tags
        return np.array([r["tags"].get(str(t), r["global"]) for t in tags], float)

    def prior_mean(self, tags: np.ndarray | None, n: int) -> np.ndarray:
        """Per-row smoothed tag mean (the global mean for an unknown tag or without a tag prior)."""
        p = self.meta.get("tag_prior") or {"tags": {}, "global": self.meta.get("global_quality", 0.5)}
        tags = np.full(n, None) if tags is None else tags
        return np.array([p["tags"].get(str(t), p["global"]) for t in tags], float)

    def predict(self, x: np.ndarray, prompt_tokens: np.ndarray, spec: LLMSpec, tags: np.ndarray | None = None,
                emb: np.ndarray | None = None, quality: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(quality, completion tokens or NaN, cost USD) for every row of x (`tags`: each row's predicted tag;
        `emb`: the rows' embeddings for a kNN quality model, default x; `quality`: its estimate, when the caller
        already computed it for several LLMs at once)."""
        q, raw = self.outputs(x, tags, emb, quality)
        tokens = np.array([self.target == "tokens"])
        return tuple(a[:, 0] for a in _finish(q[:, None], raw[:, None], prompt_tokens, tokens,
                                               np.array([spec.input_price_per_token]),
                                               np.array([spec.output_price_per_token])))

    def outputs(self, x: np.ndarray, tags: np.ndarray | None = None, emb: np.ndarray | None = None,
                quality: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The two models' outputs as they come: quality (not yet clipped) and the length model's log1p target."""
        q = self.quality_output(x, tags, emb) + self.correction(tags, len(x)) if quality is None else quality
        return q, _predict(self.length, x)

    def quality_output(self, x: np.ndarray, tags: np.ndarray | None = None,
                       emb: np.ndarray | None = None) -> np.ndarray:
        """The quality model's output as it comes (not yet clipped to [0, 1])."""
        return self.quality.output(x, tags, emb, self)


def _finish(q: np.ndarray, raw: np.ndarray, prompt_tokens: np.ndarray, tokens: np.ndarray, in_price: np.ndarray,
            out_price: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quality, completion tokens or NaN, cost USD) [n, m] from the models' outputs [n, m] of m LLMs; `tokens[j]`:
    LLM j's length model predicts completion tokens (cost = prompt x input price + completion x output price),
    else its cost in micro-dollars. One vectorised step for all LLMs: per-LLM numpy calls add up per query."""
    second = np.expm1(np.maximum(raw, 0.0))
    cost = np.where(tokens, np.asarray(prompt_tokens, float)[:, None] * in_price + second * out_price, second * 1e-6)
    return np.clip(q, 0.0, 1.0), np.where(tokens, second, np.nan), cost


@dataclass(frozen=True)
class _KNNGroup:
    """LLMs whose kNN memories live in one bank with the same k and tag per bank row: one similarity product, one
    partial sort and one vectorised estimate serve them all (per-LLM numpy calls on one query cost more than the
    arithmetic). The group's memory is the union of the LLMs' rows, in bank order; `present[row, j]` says whether
    LLM j has that row (an LLM not logged on a query, or a second log row of a query, has a row the others lack).
    Each LLM's neighbours are its k nearest present rows: the search keeps k + (most rows any LLM lacks in that
    tag) candidates, so every LLM finds its own k among them (same neighbours as its own memory's search)."""

    cols: np.ndarray  # [memory rows] bank row of each memory row (sorted)
    tags: np.ndarray | None
    names: list[str]
    labels: np.ndarray  # [memory rows, LLMs] (NaN: unknown label or absent row)
    smoothing: np.ndarray  # [LLMs]
    priors: dict[str, np.ndarray]  # tag -> [LLMs] smoothed tag means
    glob: np.ndarray  # [LLMs] prior of a tag an LLM has no prior for
    whole: bool = False  # the rows are the whole bank in order: search it without selecting columns
    k: int = 1
    by_tag: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # tag -> (memory rows, their bank rows copied)
    weights: np.ndarray | None = None  # [memory rows, LLMs] training weights (bandit logs); None: unweighted
    present: np.ndarray | None = None  # [memory rows, LLMs]; None: every LLM has every row
    spare: dict[str | None, int] = field(default_factory=dict)  # tag (None: all) -> most rows an LLM lacks there

    @classmethod
    def of(cls, llms: list["LLMPredictor"], bank: np.ndarray) -> "_KNNGroup":
        p = [m.meta.get("tag_prior") or {"tags": {}, "global": m.meta.get("global_quality", 0.5)} for m in llms]
        glob = np.array([x["global"] for x in p], float)
        names = sorted({t for x in p for t in x["tags"]})
        priors = {t: np.array([x["tags"].get(t, x["global"]) for x in p], float) for t in names}
        slots = [_slots(m.quality.cols) for m in llms]
        union = np.unique(np.concatenate(slots))
        cols = union >> _OCC_BITS
        labels, present = np.full((len(union), len(llms)), np.nan), np.zeros((len(union), len(llms)), bool)
        weighted = llms[0].quality.w is not None
        weights = np.zeros(labels.shape) if weighted else None
        tags = None if llms[0].quality.tags is None else np.empty(len(union), dtype=object)
        for j, (m, s) in enumerate(zip(llms, slots)):
            at = np.searchsorted(union, s)
            labels[at, j], present[at, j] = m.quality.y, True
            if weighted:
                weights[at, j] = m.quality.w
            if tags is not None:
                tags[at] = m.quality.tags
        whole = len(cols) == len(bank) and bool((cols == np.arange(len(bank))).all())
        by_tag, spare = None, {None: int((~present).sum(0).max())}
        if tags is not None:
            labels_str = tags.astype(str)
            by_tag = {t: (pos, np.ascontiguousarray(bank[cols[pos]]))
                      for t in np.unique(labels_str) for pos in [np.nonzero(labels_str == t)[0]]}
            spare.update({t: int((~present[pos]).sum(0).max()) for t, (pos, _) in by_tag.items()})
        return cls(cols, tags, [m.name for m in llms], labels, np.array([m.quality.smoothing for m in llms], float),
                   priors, glob, whole, llms[0].quality.k, by_tag, weights,
                   None if present.all() else present, spare)

    def _select(self, sims: np.ndarray, pos: np.ndarray, spare: int) -> tuple[np.ndarray, np.ndarray]:
        """(memory rows, valid) of each query's neighbours among memory rows `pos` (`sims`: queries x pos; -inf:
        excluded). valid is [queries, width] when every LLM has every row, else [queries, width, LLMs]."""
        width = min(self.k + (spare if self.present is not None else 0), sims.shape[1])
        top = np.argpartition(-sims, width - 1, axis=1)[:, :width] if width < sims.shape[1] else \
            np.broadcast_to(np.arange(width), (len(sims), width))
        found = np.take_along_axis(sims, top, 1)
        if self.present is None:
            return pos[top], np.isfinite(found)
        order = np.argsort(-found, axis=1, kind="stable")  # nearest first: each LLM keeps its first k present rows
        top, found = np.take_along_axis(top, order, 1), np.take_along_axis(found, order, 1)
        ok = self.present[pos[top]] & np.isfinite(found)[:, :, None]
        return pos[top], ok & (np.cumsum(ok, axis=1) <= self.k)

    def neighbours(self, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours over the whole memory (`sims`: queries x memory rows; used when the memory has no tags)."""
        return self._select(sims, np.arange(sims.shape[1]), self.spare[None])

    def search(self, query: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """KNNQuality.neighbours for tagged memories, searching each query's tag rows only (one contiguous copy
        per tag): same neighbours, a fraction of the memory read per query. Why: the service's predictor step
        reads the whole memory (~3-5 MB) from RAM on every request, and on 2 shared cores the matmul over rows
        that the tag mask then discards was a third of the step."""
        width = min(self.k + (self.spare[None] if self.present is not None else 0), len(self.cols))
        shape = (len(query), width) if self.present is None else (len(query), width, len(self.names))
        idx, valid = np.zeros((len(query), width), np.int64), np.zeros(shape, bool)
        labels = np.array([str(t) for t in tags])
        for t in (labels[:1] if len(labels) == 1 else np.unique(labels)):
            if t not in self.by_tag:
                continue  # a tag the memory has not seen: no neighbour, the estimate is the prior
            pos, sub = self.by_tag[t]
            sel = np.nonzero(labels == t)[0]
            got, ok = self._select(query[sel] @ sub.T, pos, self.spare[t])
            idx[sel, : got.shape[1]], valid[sel, : got.shape[1]] = got, ok
        return idx, valid

    def estimate(self, idx: np.ndarray, valid: np.ndarray, tags: np.ndarray | None) -> np.ndarray:
        """[queries, LLMs]: KNNQuality.estimate for every LLM of the group at once."""
        n = len(idx)
        prior = np.tile(self.glob, (n, 1)) if tags is None else \
            np.stack([self.priors.get(str(t), self.glob) for t in tags])
        y = self.labels[idx]  # [queries, width, LLMs]
        valid = valid[:, :, None] if valid.ndim == 2 else valid
        if self.weights is not None:
            return shrunk_mean(np.where(valid, y, np.nan), self.weights[idx], self.smoothing, prior)
        known = valid & ~np.isnan(y)
        total = np.where(known, y, 0.0).sum(1) + self.smoothing * prior
        count = known.sum(1) + self.smoothing
        return np.divide(total, count, out=prior.copy(), where=count > 0)


_OCC_BITS = 20  # a memory slot = bank row << 20 | occurrence (the n-th log row of that query for the LLM)


def _slots(cols: np.ndarray) -> np.ndarray:
    """Each memory row's slot key: its bank row and how many earlier rows of the memory have the same bank row,
    so two LLMs' memories line up row for row even when a query appears twice in one of them."""
    order = np.argsort(cols, kind="stable")
    ordered = cols[order]
    start = np.r_[0, np.nonzero(np.diff(ordered))[0] + 1]
    occ = np.arange(len(cols)) - np.repeat(start, np.diff(np.r_[start, len(cols)]))
    out = np.empty(len(cols), np.int64)
    out[order] = (ordered.astype(np.int64) << _OCC_BITS) | occ
    return out


def fit_llm(name: str, x: np.ndarray, rows: pd.DataFrame, cfg: PredictorConfig, seed: int,
            tags: np.ndarray | None = None, bank: np.ndarray | None = None,
            cols: np.ndarray | None = None) -> LLMPredictor:
    """Train one LLM's models from its log rows (aligned with x; `tags`: each row's tag for the prior).

    kNN quality: the neighbour space is `bank[cols]` (unit embeddings of the rows' queries; `bank` may be shared
    with other LLMs), by default the rows of x.

    Rows a logging policy chose, with `bandit_labels="residual"` and enough full-information rows: the model is
    trained on the full-information rows alone and the logged rows correct it (`residual_correction`). Why: a
    policy picks an LLM where it looks good, e.g. the reference model on a task's hard queries; as memory rows they
    pull its estimate there toward what is hard for every model, while the other models, never tried there, keep
    their estimates, and no propensity weight undoes a choice made with probability ~1. As residuals against the
    model's own prediction, they move it only by what it got wrong, shrunk toward no correction."""
    logged = pd.to_numeric(rows["propensity"], errors="coerce").notna().to_numpy() if "propensity" in rows else \
        np.zeros(len(rows), bool)
    full = ~logged & pd.to_numeric(rows["quality"], errors="coerce").notna().to_numpy()
    if cfg.bandit_labels in ("residual", "relative") and logged.any() and full.sum() >= cfg.min_rows:
        at = np.arange(len(x)) if cols is None else np.asarray(cols)
        space = _unit(x) if bank is None else bank  # the kNN memory's rows (the base model ignores it otherwise)
        tag = (lambda sel: None) if tags is None else (lambda sel: np.asarray(tags)[sel])
        model = _fit_llm(name, x[~logged], rows[~logged], cfg, seed, tag(~logged), space, at[~logged])
        model.meta.update(residual_correction(model, x[logged], rows[logged], cfg, tag(logged), space[at[logged]]))
        model.n_rows = int(len(rows))
        return model
    return _fit_llm(name, x, rows, cfg, seed, tags, bank, cols)


def residual_correction(model: LLMPredictor, x: np.ndarray, rows: pd.DataFrame, cfg: PredictorConfig,
                        tags: np.ndarray | None, emb: np.ndarray | None) -> dict:
    """{"residual": {"global": c, "tags": {tag: c}}, "logged_policy_rows": n}: the (clipped) inverse-propensity
    weighted mean of (label - the model's prediction) over the labelled logged rows, per tag, each shrunk toward 0
    by `residual_smoothing` pseudo-rows against its effective sample size (the global one likewise; a tag without
    rows gets the global correction). The correction is added to the model's prediction at inference."""
    label = pd.to_numeric(rows["quality"], errors="coerce").to_numpy(float)
    ok = ~np.isnan(label)
    out: dict = {"logged_policy_rows": int(len(rows)), "residual_rows": int(ok.sum())}
    if not ok.any():
        return out
    pred = np.clip(model.quality_output(x[ok], None if tags is None else tags[ok],
                                        None if emb is None else emb[ok]), 0.0, 1.0)
    r, w = label[ok] - pred, row_weights(rows[ok], cfg.propensity_clip)
    out["residual"] = _tag_means(r, w, None if tags is None else np.asarray(tags, dtype=object)[ok],
                                 cfg.residual_smoothing, cfg.residual_shrinkage)
    return out


def relative_rows(log: pd.DataFrame, bank: "PredictorBank") -> np.ndarray:
    """Positions of the labelled logged rows of LLMs trained with a residual correction (full-information base
    plus logged rows)."""
    if "propensity" not in log:
        return np.zeros(0, np.int64)
    logged = pd.to_numeric(log["propensity"], errors="coerce").notna().to_numpy()
    labelled = pd.to_numeric(log["quality"], errors="coerce").notna().to_numpy()
    corrected = np.array([m in bank.llms and "residual" in bank.llms[m].meta for m in log["model"]], bool)
    return np.flatnonzero(logged & labelled & corrected)


def shared_difficulty(r: np.ndarray, emb: np.ndarray, tags: np.ndarray | None, k: int) -> np.ndarray:
    """Per logged row, the mean residual of its k most similar other logged rows of the same tag (any LLM); 0
    for a row alone in its tag (nothing to compare it with, so it corrects nothing)."""
    out = np.zeros(len(r))
    groups = [np.arange(len(r))] if tags is None else [np.flatnonzero(tags == g) for g in pd.unique(tags)]
    for idx in groups:
        if len(idx) < 2:
            out[idx] = r[idx]
            continue
        sims = emb[idx] @ emb[idx].T
        np.fill_diagonal(sims, -np.inf)
        kk = min(k, len(idx) - 1)
        nb = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        out[idx] = r[idx][nb].mean(axis=1)
    return out


def _tag_means(r: np.ndarray, w: np.ndarray, tags: np.ndarray | None, s: float,
               rule: str = "pseudo_rows") -> dict:
    """{"global": c, "tags": {tag: c}}: weighted means of r shrunk toward 0 (global) and toward the global one
    (per tag) with `s` pseudo-rows, as `residual_correction` stores them (`rule="empirical_bayes"`: `_eb_means`)."""
    if rule == "empirical_bayes":
        return _eb_means(r, w, tags)
    glob = float(shrunk_mean(r[None], w[None], s, np.zeros(1))[0])
    by_tag = {}
    if tags is not None:
        t = np.asarray(tags, dtype=object).astype(str)
        by_tag = {str(k): float(shrunk_mean(r[t == k][None], w[t == k][None], s, np.array([glob]))[0])
                  for k in np.unique(t)}
    return {"global": glob, "tags": by_tag}


def _eb_means(r: np.ndarray, w: np.ndarray, tags: np.ndarray | None) -> dict:
    """Empirical-Bayes corrections: each mean residual shrunk by its own standard error, no fixed pseudo-count.

    Variance of a row's residual: the weighted within-tag variance v (pooled); a mean over n_eff rows has standard
    error^2 = v / n_eff. Global: m x max(0, 1 - se^2 / m^2) (positive-part James-Stein toward 0: kept only as far
    as it stands out of its noise). Per tag: c + tau^2 / (tau^2 + se_t^2) x (m_t - c), tau^2 = the between-tag
    variance of the tag means around the global correction c, by moments (mean of (m_t - c)^2 - se_t^2, floored
    at 0): tags differ only as much as their means differ beyond noise."""
    w = np.asarray(w, float)
    t = np.zeros(len(r), object) if tags is None else np.asarray(tags, dtype=object).astype(str)
    keys = np.unique(t)
    stats = {}
    for k in keys:
        sel = t == k
        sw, sw2 = w[sel].sum(), (w[sel] ** 2).sum()
        m = float((w[sel] * r[sel]).sum() / sw) if sw > 0 else 0.0
        stats[k] = (m, sw * sw / sw2 if sw2 > 0 else 0.0, float((w[sel] * (r[sel] - m) ** 2).sum()))
    sw, sw2 = w.sum(), (w * w).sum()
    v = max(sum(x[2] for x in stats.values()) / sw if sw > 0 else 0.0, 1e-6)
    m, n = float((w * r).sum() / sw) if sw > 0 else 0.0, sw * sw / sw2 if sw2 > 0 else 0.0
    glob = m * max(0.0, 1.0 - (v / n) / (m * m)) if n > 0 and m != 0 else 0.0
    by_tag: dict = {}
    if tags is not None:
        se2 = {k: v / max(stats[k][1], 1e-12) for k in keys}
        tau2 = max(0.0, float(np.mean([(stats[k][0] - glob) ** 2 - se2[k] for k in keys])))
        by_tag = {str(k): float(glob + tau2 / (tau2 + se2[k]) * (stats[k][0] - glob)) for k in keys}
    return {"global": float(glob), "tags": by_tag}


def _fit_llm(name: str, x: np.ndarray, rows: pd.DataFrame, cfg: PredictorConfig, seed: int,
             tags: np.ndarray | None = None, bank: np.ndarray | None = None,
             cols: np.ndarray | None = None) -> LLMPredictor:
    """fit_llm with every row in the LLM's own models (propensity-weighted when any row has one)."""
    quality = pd.to_numeric(rows["quality"], errors="coerce").to_numpy(float)
    labelled = ~np.isnan(quality)  # an unknown quality is left out, never learned as a failure
    if labelled.sum() < cfg.min_rows:
        raise TrainingError(f"LLM {name!r} has {int(labelled.sum())} rows with a quality label; at least "
                            f"{cfg.min_rows} are needed. Add logs for it or remove it from the catalogue")
    weight = row_weights(rows, cfg.propensity_clip)
    wq = None if weight is None else weight[labelled]
    y = quality[labelled]
    kind = "binary" if np.isin(y, (0.0, 1.0)).all() else "regression"
    meta: dict = {"quality_rows": int(labelled.sum()),
                  "global_quality": float(np.mean(y) if wq is None else np.sum(wq * y) / np.sum(wq))}
    if weight is not None:
        meta["logged_policy_rows"] = int(pd.to_numeric(rows["propensity"], errors="coerce").notna().sum())
    if cfg.tag_prior and tags is not None:
        meta["tag_prior"] = tag_prior(y, np.asarray(tags)[labelled], cfg.prior_smoothing, wq)
    if cfg.quality_model in ("knn", "blend"):
        if bank is None:
            bank, cols = _unit(x), np.arange(len(x))
        row_tags = np.asarray(tags, dtype=object) if cfg.tag_prior and tags is not None else None
        q_model: QualityModel = KNNQuality(bank, np.asarray(cols, np.int64), quality, row_tags, cfg.knn_k,
                                           cfg.knn_smoothing, weight)
    if cfg.quality_model in ("lgbm", "blend"):  # trees boost from the tag prior (the base prediction adds back)
        base = None if "tag_prior" not in meta else LLMPredictor(
            name, ConstantQuality(0.0), kind, 0.0, "tokens", meta=meta).prior(np.asarray(tags)[labelled],
                                                                              int(labelled.sum()))
        trees = _train(x[labelled], y, kind, cfg, seed, base, cfg.quality_n_estimators, wq)
        t_model = ConstantQuality(trees) if isinstance(trees, float) else LGBMQuality(trees)
        q_model = t_model if cfg.quality_model == "lgbm" else BlendQuality(q_model, t_model, cfg.blend_knn_weight)
    tokens = pd.to_numeric(rows["completion_tokens"], errors="coerce").to_numpy(float)
    cost = pd.to_numeric(rows["cost_usd"], errors="coerce").to_numpy(float)
    if np.mean(~np.isnan(tokens)) >= 0.5:
        target, t = "tokens", np.log1p(tokens)
    elif (~np.isnan(cost)).sum() >= cfg.min_rows:
        target, t = "cost", np.log1p(cost * 1e6)
    else:
        raise TrainingError(f"LLM {name!r} has neither completion_tokens nor cost_usd in its rows; log one of them")
    ok = ~np.isnan(t)
    length = _train(x[ok], t[ok], "regression", cfg, seed, weight=None if weight is None else weight[ok])
    return LLMPredictor(name, q_model, kind, length, target, n_rows=int(len(rows)), meta=meta)


class PredictorBank:
    """The per-LLM predictors, keyed by LLM name (insertion order = router model order)."""

    def __init__(self, config: PredictorConfig | None = None, seed: int = 0) -> None:
        self.config = config or PredictorConfig()
        self.seed = seed
        self.llms: dict[str, LLMPredictor] = {}
        self._groups: tuple | None = None  # (key, groups) of _knn_groups

    def fit(self, x: np.ndarray, log: pd.DataFrame, row_index: np.ndarray, names: list[str],
            progress: bool = False, tags: np.ndarray | None = None,
            emb: np.ndarray | None = None) -> "PredictorBank":
        """Fit every LLM in `names`; `row_index[i]` is the feature row of log row i (`tags`, `emb`: per feature
        row; `emb` = unit embeddings the kNN quality models search, default the normalised feature rows)."""
        from tqdm.auto import tqdm

        emb = _unit(x) if emb is None and self.config.quality_model != "lgbm" else emb
        for name in tqdm(names, desc="train predictors", disable=not progress, leave=False):
            self.add(name, x, log, row_index, tags, emb)
        self.relate(x, log, row_index, tags, emb)
        return self

    def add(self, name: str, x: np.ndarray, log: pd.DataFrame, row_index: np.ndarray,
            tags: np.ndarray | None = None, emb: np.ndarray | None = None) -> LLMPredictor:
        """(Re)train only `name`'s two models; every other LLM's objects stay as they are. `emb` (unit rows, one
        per feature row) is kept by reference as the kNN memory, so LLMs added from one `emb` share it."""
        mask = (log["model"] == name).to_numpy()
        if not mask.any():
            raise TrainingError(f"no log rows for LLM {name!r}; it cannot be added without data")
        rows = row_index[mask]
        self.llms[name] = fit_llm(name, x[rows], log[mask], self.config, self.seed,
                                  None if tags is None else np.asarray(tags)[rows],
                                  None if emb is None else np.asarray(emb, np.float32), rows)
        return self.llms[name]

    def remove(self, name: str) -> None:
        self.llms.pop(name)

    def lean_on_others(self, name: str, rows: float) -> None:
        """Shrink `name`'s per-tag prior (the target of its kNN shrinkage) toward the other LLMs' mean prior of
        the tag, with `rows` pseudo-rows against its own labelled rows of that tag: (n_t x own + rows x others) /
        (n_t + rows). Why: a newcomer known from a few benchmark rows per task carries their sampling noise
        (RouterBench, 37 Winogrande rows: predicted 0.786, true 0.689 on held-out queries); the catalogue's
        mean on the task is the empirical-Bayes prior of a model nobody has seen much of. Only its meta changes."""
        me = self.llms[name]
        others = [p.meta.get("tag_prior") for n, p in self.llms.items() if n != name and p.meta.get("tag_prior")]
        own = me.meta.get("tag_prior")
        if rows <= 0 or not others or not own:
            return
        counts = _tag_counts(me)
        glob = float(np.mean([o["global"] for o in others]))
        mix = lambda v, o, n: float((n * v + rows * o) / (n + rows))  # noqa: E731
        tags = {t: mix(v, float(np.mean([o["tags"].get(t, o["global"]) for o in others])), counts.get(t, 0))
                for t, v in own["tags"].items()}
        prior = {"global": mix(own["global"], glob, me.meta.get("quality_rows", 0)), "tags": tags}
        me.meta = {**me.meta, "tag_prior": prior, "own_tag_prior": own, "prior_rows": float(rows)}

    def relate(self, x: np.ndarray, log: pd.DataFrame, row_index: np.ndarray, tags: np.ndarray | None,
               emb: np.ndarray | None) -> None:
        """`bandit_labels="relative"`: replace each LLM's residual correction by a relative one (no-op otherwise).

        Why: the service picks a model where it looks good, e.g. the reference model on a task's hard queries, so
        a model's residuals (label - its own prediction) on its logged rows carry those queries' difficulty, which
        every model shares and which must not move routing. The difficulty of a logged query is estimated as the
        mean residual of the `relative_k` most similar OTHER logged queries of its tag, whichever LLM answered them
        (one LLM per query: this is the only way to tell a hard query from a weak model); each LLM's correction
        is then the shrunk, inverse-propensity weighted mean per tag of (its residual - that difficulty), i.e. how
        much better or worse it did than the models logged around it. Where the policy never varied its choice
        the correction stays ~0 (nothing learned), where exploration tried another model it moves by the
        difference. Needs every LLM's base model, hence a step over the whole bank after per-LLM training."""
        if self.config.bandit_labels != "relative":
            return
        pos = relative_rows(log, self)
        if not len(pos):
            return
        rows, at = log.iloc[pos], row_index[pos]
        t = None if tags is None else np.asarray(tags, dtype=object)[at]
        e = _unit(x[at]) if emb is None else np.asarray(emb, np.float32)[at]
        r = np.empty(len(rows))
        for name in rows["model"].unique():
            sel = (rows["model"] == name).to_numpy()
            p = self.llms[name].quality_output(x[at[sel]], None if t is None else t[sel], e[sel])
            r[sel] = rows["quality"].to_numpy(float)[sel] - np.clip(p, 0.0, 1.0)
        rel = r - shared_difficulty(r, e, t, self.config.relative_k)
        w = row_weights(rows, self.config.propensity_clip)
        for name in rows["model"].unique():
            sel = (rows["model"] == name).to_numpy()
            meta = dict(self.llms[name].meta)
            meta["residual"] = _tag_means(rel[sel], w[sel], None if t is None else t[sel],
                                          self.config.residual_smoothing, self.config.residual_shrinkage)
            meta["relative_rows"] = int(sel.sum())
            self.llms[name].meta = meta

    def _knn_groups(self) -> list[tuple[np.ndarray, list[_KNNGroup]]]:
        """[(bank, [groups])]: equal banks (by content) searched once; LLMs of one bank with the same k, the same
        tag on every bank row they share and the same weighting share one search and one estimate, whatever rows
        each one has (see `_KNNGroup`). Why not group by identical rows: the canonical row order of training
        (router.canonical_rows) puts each LLM's rows in a different order, and an LLM missing a few queries would
        get a search of its own: 11 searches per query instead of one. Cached while the quality models are the same."""
        state = tuple((n, id(p.quality), id(p.meta)) for n, p in self.llms.items())
        if self._groups is not None and self._groups[0] == state:
            return self._groups[1]
        banks: dict[str, tuple[np.ndarray, list]] = {}
        digests: dict[int, str] = {}  # hash each bank array once (a RouterBench-size bank is ~56 MB)
        for name, p in self.llms.items():
            if not isinstance(p.quality, KNNQuality):
                continue
            m = p.quality
            digest = digests.get(id(m.bank)) or digests.setdefault(id(m.bank), _digest(m.bank))
            bank, members = banks.setdefault(digest, (m.bank, []))
            m.bank = bank  # equal content: share one array (e.g. after per-LLM training in separate processes)
            key = (m.k, m.tags is None, m.w is None)  # weighted and unweighted memories estimate apart
            tags = None if m.tags is None else m.tags.astype(str)
            for g_key, tag_of, names in members:
                if g_key == key and (tags is None or _tags_agree(tag_of, m.cols, tags)):
                    break
            else:
                g_key, tag_of, names = key, None if tags is None else np.full(len(bank), None, object), []
                members.append((g_key, tag_of, names))
            if tag_of is not None:
                tag_of[m.cols] = tags
            names.append(name)
        self._groups = (state, [(bank, [_KNNGroup.of([self.llms[n] for n in names], bank)
                                        for _, _, names in members]) for bank, members in banks.values()])
        return self._groups[1]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.llms)

    def predict(self, x: np.ndarray, prompt_tokens: np.ndarray, specs: dict[str, LLMSpec],
                tags: np.ndarray | None = None, emb: np.ndarray | None = None):
        """quality, completion tokens, cost: arrays [n, m] in `names` order (one batched call per model; kNN
        quality: per group of LLMs sharing a bank (`_KNNGroup`), one search over each query tag's rows (the whole
        memory when there are no tags), one partial sort and one estimate)."""
        found: dict[str, np.ndarray] = {}
        query = None
        for bank, groups in self._knn_groups():
            query = _unit(x if emb is None else emb) if query is None else query
            sims = None
            for g in groups:
                if g.by_tag is not None and tags is not None:
                    found_rows = g.search(query, tags)
                else:
                    sims = query @ bank.T if sims is None else sims
                    found_rows = g.neighbours(sims if g.whole else sims[:, g.cols])
                est = g.estimate(*found_rows, tags)
                found.update({n: est[:, j] for j, n in enumerate(g.names)})
        q = np.empty((len(x), len(self.llms)))
        for j, (n, p) in enumerate(self.llms.items()):
            q[:, j] = (found[n] if n in found else p.quality_output(x, tags, emb)) + p.correction(tags, len(x))
        raw = _predict_each([p.length for p in self.llms.values()], x)
        tokens = np.array([p.target == "tokens" for p in self.llms.values()], bool)
        prices = np.array([(specs[n].input_price_per_token, specs[n].output_price_per_token) for n in self.llms])
        return _finish(q, raw, prompt_tokens, tokens, *prices.reshape(-1, 2).T)

    # ------------------------------------------------------------------ persistence (LightGBM text, no pickle) --
    def save(self, path: Path) -> dict:
        path.mkdir(parents=True, exist_ok=True)
        index, banks = [], {}
        for g, (bank, _) in enumerate(self._knn_groups()):  # each distinct kNN memory once
            np.save(path / f"knn_bank_{g}.npy", bank, allow_pickle=False)
            banks[id(bank)] = f"knn_bank_{g}.npy"
        for i, (name, p) in enumerate(self.llms.items()):
            entry = {"name": name, "quality_kind": p.quality_kind, "target": p.target, "n_rows": p.n_rows,
                     "meta": p.meta}
            entry["quality"] = p.quality.entry(path, f"{i:03d}.quality", banks)
            if isinstance(p.length, float):
                entry["length"] = {"constant": p.length}
            else:
                p.length.save_model(str(path / f"{i:03d}.length.txt"))
                entry["length"] = {"file": f"{i:03d}.length.txt"}
            index.append(entry)
        return {"config": self.config.model_dump(), "seed": self.seed, "llms": index}

    @classmethod
    def load(cls, path: Path, index: dict) -> "PredictorBank":
        from threadpoolctl import threadpool_limits

        bank = cls(PredictorConfig(**index["config"]), seed=index["seed"])
        # Parse on one OpenMP thread: LightGBM's parallel parse leaves an OpenMP team on the loading thread, and
        # a second team in the process makes every torch forward pass on the serving thread ~1.8x slower on 2 cores
        # (measured: 14.1 ms vs 8.0 ms per query). The models predict with num_threads=1 anyway.
        try:
            with threadpool_limits(limits=1, user_api="openmp"):
                banks: dict[str, np.ndarray] = {}
                for e in index["llms"]:
                    length = float(e["length"]["constant"]) if "constant" in e["length"] else \
                        lgb.Booster(model_file=str(path / e["length"]["file"]))
                    bank.llms[e["name"]] = LLMPredictor(e["name"], load_quality(path, e["quality"], banks),
                                                        e["quality_kind"], length, e["target"], e.get("n_rows", 0),
                                                        e.get("meta", {}))
        except (KeyError, ValueError, lgb.basic.LightGBMError, OSError) as err:
            raise ArtifactError(f"{path}: predictor files are missing or corrupt ({err}); retrain the router") from err
        return bank


def _tag_counts(llm: "LLMPredictor") -> dict[str, int]:
    """Labelled rows per tag of an LLM's kNN memory ({} when it has no tagged memory)."""
    q = llm.quality.knn if isinstance(llm.quality, BlendQuality) else llm.quality
    if not isinstance(q, KNNQuality) or q.tags is None:
        return {}
    known = ~np.isnan(q.y)
    names, n = np.unique(q.tags[known].astype(str), return_counts=True)
    return {str(t): int(c) for t, c in zip(names, n)}


def _tags_agree(tag_of: np.ndarray, cols: np.ndarray, tags: np.ndarray) -> bool:
    """Whether a memory's tags (per row at bank rows `cols`) agree with a group's tag per bank row (None: unset)."""
    seen = tag_of[cols]
    known = seen != None  # noqa: E711 - elementwise on an object array
    return bool((seen[known] == tags[known]).all())


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str((a.dtype, a.shape)).encode() + a.tobytes()).hexdigest()
