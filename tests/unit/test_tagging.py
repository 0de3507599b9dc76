"""Tags: the log's task wins; the pluggable tagger fills in only the untagged queries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixllm.tagging import DOMAINS, TaxonomyTagger, query_tags

pytestmark = pytest.mark.unit


class FirstWordTagger:
    """A tagger plug-in (the Tagger protocol): tags by the prompt's first word; records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def tag(self, prompts, embeddings):
        self.seen.extend(prompts)
        return [p.split()[0].lower() for p in prompts]


def test_task_column_wins_and_tagger_sees_only_untagged_rows():
    q = pd.DataFrame({"prompt": ["Math: 2+2", "Code: fib", "Poem about rain"], "task": ["gsm8k", None, " "]})
    tagger = FirstWordTagger()
    assert query_tags(q, np.zeros((3, 4)), tagger) == ["gsm8k", "code:", "poem"]
    assert tagger.seen == ["Code: fib", "Poem about rain"]
    assert query_tags(q.assign(task=["a", "b", "c"]), np.zeros((3, 4)), None) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="need a tagger"):
        query_tags(q, np.zeros((3, 4)), None)


def test_taxonomy_tagger_picks_most_similar_domain_description():
    names = list(DOMAINS)
    assert 15 <= len(names) <= 25

    def encode(texts):  # one-hot per description: the geometry the real encoder provides approximately
        return np.eye(len(names))[[list(DOMAINS.values()).index(t) for t in texts]]

    tagger = TaxonomyTagger(encode)
    emb = np.eye(len(names))[[names.index("coding"), names.index("math")]] * 0.9 + 0.01
    assert tagger.tag(["a", "b"], emb) == ["coding", "math"]
    assert tagger.tag([], np.zeros((0, len(names)))) == []
