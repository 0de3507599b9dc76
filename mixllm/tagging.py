"""Domain tags per query: the log's `task` column when present, else an offline zero-shot tagger. Pluggable.

Why tags: the router's encoder is fine-tuned so same-tag queries cluster (see `embeddings`), and the similarity to
each tag centroid is a predictor feature. Logs from production rarely carry a task label, so a CPU-only tagger
assigns each unlabelled query to the nearest of ~20 coarse domains by embedding similarity to a short description
of each domain (no training data, no network).
"""

from __future__ import annotations

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


def query_tags(queries: pd.DataFrame, embeddings: np.ndarray, tagger: Tagger | None) -> list[str]:
    """One tag per query row: its `task` when set, else the tagger's (only the untagged rows are sent to it)."""
    task = queries["task"] if "task" in queries else pd.Series([None] * len(queries))
    tags = [t if isinstance(t, str) and t.strip() else None for t in task]
    missing = [i for i, t in enumerate(tags) if t is None]
    if missing:
        if tagger is None:
            raise ValueError("queries without a task need a tagger")
        guessed = tagger.tag([queries["prompt"].iloc[i] for i in missing], embeddings[missing])
        for i, g in zip(missing, guessed):
            tags[i] = g
    return [str(t) for t in tags]
