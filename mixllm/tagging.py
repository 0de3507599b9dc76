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

import warnings
from collections.abc import Mapping, Sequence
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
