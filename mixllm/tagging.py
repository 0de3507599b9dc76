"""Domain tags per query: the log's `task` column when present, else an offline zero-shot tagger. Pluggable.

Why tags: the router's encoder is fine-tuned so same-tag queries cluster (see `embeddings`), and the similarity to
each tag centroid is a predictor feature. Logs from production rarely carry a task label, so a CPU-only tagger
assigns each unlabelled query to the nearest of ~20 coarse domains by embedding similarity to a short description
of each domain (no training data, no network).

`outcome_tags` refines the domain tags used for fine-tuning with what the logs say about each training query: which
LLMs answered it well. A domain tag alone teaches the encoder nothing the router does not already know when the
domains are easy to tell apart (the kNN quality models already look only within the query's domain).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

# Coarse domain taxonomy: name -> description embedded once; queries take the most similar description.
DOMAINS: dict[str, str] = {
    "coding": "write a python function or program; code, algorithms, debugging, unit tests",
    "math": "solve a math problem: arithmetic, algebra, equations, word problems with numbers",
    "science": "a science question about physics, chemistry, biology, earth science or astronomy",
    "commonsense": "everyday commonsense reasoning about people, objects and situations; fill in the blank",
    "reading": "reading comprehension: answer a question about a given passage",
    "trivia": "general knowledge trivia question about facts, people, places and events",
    "history": "history, historical events, wars, politics of the past",
    "law": "legal question about laws, contracts, courts and regulations",
    "medicine": "medical or health question about diseases, symptoms, treatment and drugs",
    "finance": "finance, economics, business, accounting, markets and investing",
    "writing": "creative writing: write a story, poem, essay, email or marketing copy",
    "summarisation": "summarise or rewrite a text, make it shorter or clearer",
    "translation": "translate text between languages",
    "chat": "casual conversation, greetings, opinions and advice",
    "philosophy": "philosophy, ethics and moral questions",
    "logic": "logic puzzles, riddles and multi-step reasoning",
    "data": "data analysis, SQL queries, spreadsheets and statistics",
    "technology": "computers, software, internet, hardware and IT support",
    "language": "grammar, word meaning, spelling and linguistics",
    "multiple_choice": "multiple-choice exam question: answer with the letter of the correct option",
}


class Tagger(Protocol):
    """Anything that maps prompts (and their embeddings) to one tag string each."""

    def tag(self, prompts: Sequence[str], embeddings: np.ndarray) -> list[str]: ...


class TaxonomyTagger:
    """Zero-shot: the domain whose description embedding is most similar to the query embedding."""

    def __init__(self, encode, domains: Mapping[str, str] | None = None) -> None:
        self.domains = dict(domains or DOMAINS)
        self._names = list(self.domains)
        self._centres = np.asarray(encode(list(self.domains.values())), np.float32)

    def tag(self, prompts: Sequence[str], embeddings: np.ndarray) -> list[str]:
        if len(prompts) == 0:
            return []
        best = np.argmax(np.asarray(embeddings, np.float32) @ self._centres.T, axis=1)
        return [self._names[i] for i in best]


class ClusterTagger:
    """Data-driven tags for logs without labels: k-means (k = `clusters`, seeded) over the queries' unit embeddings,
    each cluster named by its index ("c07").

    Why: a fixed taxonomy of ~20 coarse domains puts differently-formatted workloads (e.g. GSM8K, MGSM and MATH
    prompts) into one "math" tag and may spread one workload over several; clusters of the log's own embeddings
    follow its workloads, which is what the tag prior and the within-tag neighbour search need. `tag` fits on the
    prompts it is given (the training queries); new queries take the nearest tag centroid, as for every tag."""

    def __init__(self, clusters: int = 30, seed: int = 0) -> None:
        if clusters < 2:
            raise ValueError(f"ClusterTagger needs at least 2 clusters, got {clusters}")
        self.clusters, self.seed = clusters, seed

    def tag(self, prompts: Sequence[str], embeddings: np.ndarray) -> list[str]:
        from sklearn.cluster import KMeans

        x = np.asarray(embeddings, np.float64)
        if len(x) == 0:
            return []
        k = min(self.clusters, len(np.unique(x, axis=0)))
        if k < 2:
            return ["c00"] * len(x)
        labels = KMeans(k, n_init=3, random_state=self.seed).fit_predict(x)
        return [f"c{int(lab):02d}" for lab in labels]


def query_tags(queries: pd.DataFrame, embeddings: np.ndarray, tagger: Tagger | None) -> list[str]:
    """One tag per query row: its `task` when set; else, when other rows have a task, the task whose centroid is
    nearest (`nearest_task`); else the tagger's (only the untagged rows are sent to it).

    Why the centroid before the tagger: the service logs decisions without a task, and a training snapshot mixes
    them with task-labelled benchmark rows. Tagged by the taxonomy they would form tags of their own ("math" beside
    "gsm8k") that hold only the service's one-model-per-query rows: every other LLM's estimate in such a tag falls
    back to its global mean, and at inference the router sends new queries to those tags (measured in the closed
    loop: candidates trained on seed + rated decisions scored below the seed alone). The router tags a new query by
    its nearest tag centroid, so untagged training rows take the same rule."""
    task = queries["task"] if "task" in queries else pd.Series([None] * len(queries))
    tags = [t if isinstance(t, str) and t.strip() else None for t in task]
    missing = [i for i, t in enumerate(tags) if t is None]
    if missing and len(missing) < len(tags):
        for i, t in zip(missing, nearest_task(tags, np.asarray(embeddings, np.float32), missing)):
            tags[i] = t
    elif missing:
        if tagger is None:
            raise ValueError("queries without a task need a tagger")
        guessed = tagger.tag([queries["prompt"].iloc[i] for i in missing], embeddings[missing])
        for i, g in zip(missing, guessed):
            tags[i] = g
    return [str(t) for t in tags]


def nearest_task(tags: Sequence[str | None], embeddings: np.ndarray, rows: Sequence[int]) -> list[str]:
    """For each of `rows`, the task (among the rows whose tag is set) whose unit-norm mean embedding is most
    similar to the row's embedding: the router's inference rule (`MixLLMRouter._nearest_tags`)."""
    known = np.array([t is not None for t in tags])
    names, label = np.unique(np.array([t for t in tags if t is not None], dtype=object).astype(str),
                             return_inverse=True)
    emb = np.asarray(embeddings, np.float32)
    cent = np.stack([emb[known][label == k].mean(0) for k in range(len(names))])
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return [str(names[k]) for k in np.argmax(emb[list(rows)] @ cent.T, axis=1)]


def outcome_tags(tags: Sequence[str], quality: np.ndarray, clusters: int, seed: int = 0) -> list[str]:
    """Each query's domain tag plus its outcome group, e.g. ``"mbpp/o2"``: k-means (k = `clusters`) over the
    per-LLM quality vectors of the domain's training queries, one domain at a time.

    Why: fine-tuning toward these finer tags pulls together queries the same LLMs get right (and wrong), which is
    what the router's neighbour-based quality estimates average over. `quality` is [queries, LLMs] with NaN where
    an LLM has no (known) answer; a missing cell takes the domain's mean for that LLM (0 if it has none).
    """
    from sklearn.cluster import KMeans

    tags = np.asarray(list(tags), dtype=object)
    quality = np.asarray(quality, dtype=float)
    if quality.ndim != 2 or len(quality) != len(tags):
        raise ValueError(f"quality must be [queries, LLMs] with one row per tag, got {quality.shape} for "
                         f"{len(tags)} tags")
    out = [str(t) for t in tags]
    if clusters < 2:
        return out
    for tag in sorted(set(out)):
        rows = np.nonzero(tags == tag)[0]
        x = quality[rows]
        with warnings.catch_warnings():  # an LLM with no known answer in this domain: mean of nothing -> 0
            warnings.simplefilter("ignore", RuntimeWarning)
            col = np.nan_to_num(np.nanmean(x, axis=0))
        x = np.where(np.isnan(x), col, x)
        k = min(clusters, len(np.unique(x, axis=0)))
        if k < 2:
            continue
        labels = KMeans(k, n_init=10, random_state=seed).fit_predict(x)
        for i, lab in zip(rows, labels):
            out[i] = f"{tag}/o{lab}"
    return out


SURFACE_FEATURES = ("ends_question", "starts_lower", "upper_share", "has_dollar", "digit_share", "log_chars",
                    "log_newlines", "commas_per_word", "code_words", "option_letters", "ends_period", "backslash")


def surface_features(prompts: Sequence[str]) -> np.ndarray:
    """[prompts, 12] surface cues of a prompt's format (SURFACE_FEATURES): trailing '?', casing, digits, '$',
    length, line breaks, commas per word (keyword lists), code words, option letters, LaTeX backslashes.

    Why: MiniLM is uncased and the router keeps a prompt's tail, so workloads whose questions read alike but are
    written differently (lower-case search queries vs capitalised trivia questions; sentence stems to complete)
    fall in one embedding cluster, yet the LLMs' outcomes differ by workload."""
    rows = []
    for p in prompts:
        s = str(p).strip()
        n, words = max(1, len(s)), max(1, len(s.split()))
        rows.append([s.endswith("?"), s[:1].islower(), sum(c.isupper() for c in s) / n, "$" in s,
                     sum(c.isdigit() for c in s) / n, math.log1p(len(s)), math.log1p(s.count("\n")),
                     s.count(",") / words, bool(_CODE.search(s)), bool(_OPTIONS.search(s)), s.endswith("."),
                     "\\" in s])
    return np.asarray(rows, np.float64).reshape(len(rows), len(SURFACE_FEATURES))


_CODE = re.compile(r"\b(def|return|import)\b")
_OPTIONS = re.compile(r"\(A\)|\bA\)|\nA\.|A:")


@dataclass
class SurfaceClusterTagger:
    """Outcome-aware clusters for logs without labels: k-means over [unit embedding, weight x standardised surface
    features], the number of clusters chosen from `grid` by which gives the lowest out-of-fold squared error of
    the router's quality estimate (neighbours within the cluster, shrunk to its mean) on the log's own outcomes.

    Why both: the embedding says what a prompt is about, the surface features how it is written (see
    `surface_features`); and no one cluster count suits every log (grouped CV on train, bench/tune.py
    --experiment tagger: a 3-task log wants ~3-5 clusters, a 14-task log 30+), so the log's outcomes pick it.
    New queries are assigned in the same joint space (`assign`), so serving needs the prompt text, as it has."""

    grid: tuple[int, ...] = (4, 8, 16, 32, 48)
    weight: float = 0.5
    seed: int = 0
    k: int = 150
    smoothing: float = 60.0
    folds: int = 3
    centres_: np.ndarray | None = None  # [clusters, 384 + 12] in the joint space
    names_: tuple[str, ...] = ()  # the tag of each centre
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None  # per surface feature: weight x spread of the embedding / its std
    errors_: dict[int, float] | None = None  # clusters -> out-of-fold squared error (the choice's record)
    splits: str = "none"  # after the count: "none", or split clusters in two ("joint": k-means in the joint space;
    #   "outcomes": by the neighbours' outcome profiles) while the out-of-fold error falls (`split_clusters`)
    max_clusters: int = 96  # splits stop here
    split_gain: float = 0.005  # a split is kept when it lowers its rows' out-of-fold squared error by this share
    splits_: int = 0  # splits kept (the record)

    def joint(self, embeddings: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        z = (surface_features(prompts) - self.mean_) * self.scale_
        return np.hstack([np.asarray(embeddings, np.float64), z])

    def assign(self, embeddings: np.ndarray, prompts: Sequence[str]) -> list[str]:
        """Each query's cluster: the nearest centre in the joint space."""
        if len(prompts) == 0:
            return []
        x = self.joint(embeddings, prompts)
        d = (x ** 2).sum(1)[:, None] - 2 * x @ self.centres_.T + (self.centres_ ** 2).sum(1)[None, :]
        return [self.names_[i] for i in np.argmin(d, axis=1)]

    def recentre(self, embeddings: np.ndarray, prompts: Sequence[str], tags: Sequence[str]) -> "SurfaceClusterTagger":
        """Centres = each tag's mean joint vector (after the router's representation changed the embeddings)."""
        x, tags = self.joint(embeddings, prompts), np.asarray(list(tags), dtype=object)
        self.names_ = tuple(sorted(set(tags)))
        self.centres_ = np.stack([x[tags == t].mean(0) for t in self.names_])
        return self

    def fit(self, prompts: Sequence[str], embeddings: np.ndarray, quality: np.ndarray) -> "SurfaceClusterTagger":
        """`quality`: [queries, LLMs] logged outcomes (NaN: unknown) of the same queries."""
        emb = np.asarray(embeddings, np.float64)
        feats = surface_features(prompts)
        self.mean_ = feats.mean(0)
        std = feats.std(0)
        spread = math.sqrt(float(emb.var(0).sum()) / len(SURFACE_FEATURES))
        self.scale_ = np.where(std > 0, self.weight * spread / np.where(std > 0, std, 1.0), 0.0)
        x = self.joint(emb, prompts)
        grid = sorted({min(c, len(np.unique(x, axis=0))) for c in self.grid if c >= 2})
        self.errors_ = {c: self._oof_error(x, emb, np.asarray(quality, float), c, prompts) for c in grid}
        best = min(self.errors_, key=self.errors_.get) if min(self.errors_.values()) < math.inf else min(grid)
        self.centres_ = _kmeans(x, best, self.seed, n_init=3).cluster_centers_
        if self.splits != "none":
            self.centres_, self.splits_ = split_clusters(
                x, emb, np.asarray(quality, float), self.centres_, prompts, how=self.splits, k=self.k,
                smoothing=self.smoothing, folds=self.folds, seed=self.seed, max_clusters=self.max_clusters,
                gain=self.split_gain)
        self.names_ = tuple(f"s{i:02d}" for i in range(len(self.centres_)))
        return self

    def tag(self, prompts: Sequence[str], embeddings: np.ndarray) -> list[str]:
        return self.assign(embeddings, prompts)

    def _oof_error(self, x: np.ndarray, emb: np.ndarray, quality: np.ndarray, clusters: int,
                   prompts: Sequence[str]) -> float:
        groups, _ = pd.factorize(pd.Series(list(prompts), dtype=object))  # a repeated prompt stays in one fold
        fold = np.random.default_rng(self.seed).permutation(groups.max() + 1)[groups] % self.folds
        err, n = 0.0, 0
        for f in range(self.folds):
            tr, te = fold != f, fold == f
            if tr.sum() < clusters or not te.any():
                continue
            km = _kmeans(x[tr], clusters, self.seed, n_init=1)
            est = cluster_knn(emb[tr], quality[tr], km.labels_, emb[te], km.predict(x[te]), self.k, self.smoothing)
            known = ~np.isnan(quality[te])
            err += float(((est - quality[te])[known] ** 2).sum())
            n += int(known.sum())
        return err / n if n else math.inf  # no fold could hold this many clusters: never chosen


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None, :]
    return np.argmin(d, axis=1)


def _cluster_error(emb: np.ndarray, quality: np.ndarray, labels: np.ndarray, fold: np.ndarray, k: int,
                   smoothing: float) -> tuple[float, int]:
    """(sum of squared errors, known cells) of the within-cluster kNN estimate, out of fold, for a FIXED
    partition `labels` (only the neighbour memory is held out)."""
    err, n = 0.0, 0
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        if not tr.any() or not te.any():
            continue
        est = cluster_knn(emb[tr], quality[tr], labels[tr], emb[te], labels[te], k, smoothing)
        known = ~np.isnan(quality[te])
        err += float(((est - quality[te])[known] ** 2).sum())
        n += int(known.sum())
    return err, n


def split_clusters(x: np.ndarray, emb: np.ndarray, quality: np.ndarray, centres: np.ndarray,
                   prompts: Sequence[str], how: str = "outcomes", k: int = 150, smoothing: float = 60.0,
                   folds: int = 3, seed: int = 0, max_clusters: int = 96, gain: float = 0.005,
                   min_rows: int = 40) -> tuple[np.ndarray, int]:
    """(centres, splits kept): clusters split in two, largest first, while a split lowers its rows' out-of-fold
    squared error of the within-cluster kNN estimate by more than `gain` (a share) and each half keeps
    `min_rows` queries. how="joint": the halves are 2-means in the joint space; how="outcomes": 2-means over each
    row's neighbours' mean outcomes (its 20 most similar rows of the cluster, itself excluded: which LLMs succeed
    around it), then each half's centre in the joint space. Either way a query (new or not) takes the nearest
    centre, so the partition stays what serving can compute from the prompt.

    Why: k-means follows what prompts look like; a cluster can hold two workloads the same LLMs do not win
    (issue 14: production trails labels because its clusters mix tasks with different winners)."""
    groups, _ = pd.factorize(pd.Series(list(prompts), dtype=object))
    fold = np.random.default_rng(seed).permutation(groups.max() + 1)[groups] % folds
    centres = np.asarray(centres, float).copy()
    labels = _nearest(x, centres)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        col = np.nan_to_num(np.nanmean(quality, axis=0))
    filled = np.where(np.isnan(quality), col, quality)
    tried: set[bytes] = set()
    kept = 0
    while len(centres) < max_clusters:
        sizes = np.bincount(labels, minlength=len(centres))
        order = [c for c in np.argsort(-sizes) if sizes[c] >= 2 * min_rows and centres[c].tobytes() not in tried]
        if not order:
            break
        c = order[0]
        tried.add(centres[c].tobytes())
        rows = np.nonzero(labels == c)[0]
        if how == "outcomes":
            sims = emb[rows] @ emb[rows].T
            np.fill_diagonal(sims, -np.inf)
            nn = np.argpartition(-sims, min(20, len(rows) - 1) - 1, axis=1)[:, :min(20, len(rows) - 1)]
            profile = filled[rows][nn].mean(1)
            half = _kmeans(profile, 2, seed, n_init=3).labels_
        else:
            half = _kmeans(x[rows], 2, seed, n_init=3).labels_
        if min(np.bincount(half, minlength=2)) < min_rows:
            continue
        child = np.stack([x[rows][half == h].mean(0) for h in (0, 1)])
        half = _nearest(x[rows], child)  # what assignment by nearest centre will give
        if min(np.bincount(half, minlength=2)) < min_rows:
            continue
        before, n = _cluster_error(emb[rows], quality[rows], np.zeros(len(rows), int), fold[rows], k, smoothing)
        after, _ = _cluster_error(emb[rows], quality[rows], half, fold[rows], k, smoothing)
        if n and after < (1 - gain) * before:
            centres = np.vstack([np.delete(centres, c, axis=0), child])
            labels = _nearest(x, centres)
            kept += 1
    return centres, kept


def _kmeans(x: np.ndarray, clusters: int, seed: int, n_init: int):
    from sklearn.cluster import KMeans

    return KMeans(clusters, n_init=n_init, random_state=seed).fit(x)


def cluster_knn(emb: np.ndarray, quality: np.ndarray, labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray,
                k: int, smoothing: float) -> np.ndarray:
    """The router's quality estimate in miniature (mixllm.predictors' kNN): per LLM, the mean outcome of the k most
    similar memory rows of the query's cluster, shrunk to the cluster mean with `smoothing` pseudo-rows (the cluster
    mean itself shrunk to the global one with 5)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        glob = np.nan_to_num(np.nanmean(quality, axis=0))
    out = np.tile(glob, (len(query), 1))
    for c in np.unique(query_labels):
        rows, mem = np.nonzero(query_labels == c)[0], np.nonzero(labels == c)[0]
        if not len(mem):
            continue
        y = quality[mem]
        known = ~np.isnan(y)
        prior = (np.where(known, y, 0).sum(0) + 5 * glob) / (known.sum(0) + 5)
        kk = min(k, len(mem))
        # similarities within the cluster only: a [queries, memory] matrix of a large unlabelled log would not fit
        idx = np.argpartition(-(query[rows] @ emb[mem].T), kk - 1, axis=1)[:, :kk]
        yk = y[idx]
        kn = ~np.isnan(yk)
        out[rows] = (np.where(kn, yk, 0).sum(1) + smoothing * prior) / (kn.sum(1) + smoothing)
    return out
