"""Tags: the log's task wins; the pluggable tagger fills in only the untagged queries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixllm.tagging import DOMAINS, ClusterTagger, TaxonomyTagger, outcome_tags, query_tags

pytestmark = pytest.mark.unit


class FirstWordTagger:
    """A tagger plug-in (the Tagger protocol): tags by the prompt's first word; records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def tag(self, prompts, embeddings):
        self.seen.extend(prompts)
        return [p.split()[0].lower() for p in prompts]


def test_task_column_wins_and_tagger_sees_only_untagged_rows():
    q = pd.DataFrame({"prompt": ["Math: 2+2", "Code: fib", "Poem about rain"], "task": [None, None, " "]})
    tagger = FirstWordTagger()
    assert query_tags(q, np.zeros((3, 4)), tagger) == ["math:", "code:", "poem"]
    tagger = FirstWordTagger()
    assert query_tags(q.assign(task=["a", None, None]), np.zeros((3, 4)), tagger)[0] == "a"
    assert tagger.seen == []  # other rows have a task: the untagged ones take the nearest task (next test)
    assert query_tags(q.assign(task=["a", "b", "c"]), np.zeros((3, 4)), None) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="need a tagger"):
        query_tags(q, np.zeros((3, 4)), None)


def test_untagged_rows_beside_tagged_ones_take_the_nearest_task_centroid():
    """Service decisions (no task) mixed with benchmark rows (task) join the benchmark's tags, the rule the router
    uses at inference, instead of forming taxonomy tags of their own."""
    emb = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.2], [0.2, 0.9, 0], [0.95, 0, 0.05]])
    q = pd.DataFrame({"prompt": list("abcdef"), "task": ["gsm8k", "gsm8k", "mbpp", "mbpp", None, None]})
    tagger = FirstWordTagger()
    assert query_tags(q, emb, tagger) == ["gsm8k", "gsm8k", "mbpp", "mbpp", "mbpp", "gsm8k"]
    assert tagger.seen == []


def test_taxonomy_tagger_picks_most_similar_domain_description():
    names = list(DOMAINS)
    assert 15 <= len(names) <= 25

    def encode(texts):  # one-hot per description: the geometry the real encoder provides approximately
        return np.eye(len(names))[[list(DOMAINS.values()).index(t) for t in texts]]

    tagger = TaxonomyTagger(encode)
    emb = np.eye(len(names))[[names.index("coding"), names.index("math")]] * 0.9 + 0.01
    assert tagger.tag(["a", "b"], emb) == ["coding", "math"]
    assert tagger.tag([], np.zeros((0, len(names)))) == []


def test_outcome_tags_split_each_domain_by_which_llms_answered_well():
    # domain "a": queries only LLM 0 solves vs queries only LLM 1 solves; domain "b": everyone vs no one
    solved0, solved1, every, none_ = [1.0, 0.0, 0.0], [0.0, 1.0, np.nan], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    tags = ["a"] * 6 + ["b"] * 4
    quality = np.array([solved0, solved1] * 3 + [every, none_] * 2)
    out = outcome_tags(tags, quality, clusters=2)
    assert [t.split("/")[0] for t in out] == tags  # groups never cross domains
    assert len(set(out[0:6:2])) == 1 and len(set(out[1:6:2])) == 1 and out[0] != out[1]
    assert out[6] == out[8] != out[7] == out[9]
    assert outcome_tags(tags, quality, clusters=1) == tags
    # a domain whose queries all went the same way keeps its plain tag (nothing to split)
    assert outcome_tags(["c"] * 3, np.ones((3, 3)), clusters=3) == ["c"] * 3
    with pytest.raises(ValueError, match="one row per tag"):
        outcome_tags(tags, quality[:3], clusters=2)


def test_quality_matrix_is_one_row_per_query_with_nan_for_unknown_answers():
    from mixllm.router import MixLLMRouter

    log = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q2", "q2"], "prompt": ["x", "x", "y", "y", "y"],
                        "model": ["m1", "m2", "m1", "m2", "m2"], "quality": [1.0, None, 0.0, 0.5, 1.0],
                        "task": ["t"] * 5, "prompt_tokens": [3] * 5})
    q, codes = MixLLMRouter._queries(log)
    m = MixLLMRouter._quality_matrix(log, codes, len(q))
    np.testing.assert_array_equal(m, np.array([[1.0, np.nan], [0.0, 0.75]]))


def test_cluster_tagger_recovers_separated_groups_and_is_seeded():
    """Unlabelled logs: k-means tags follow the log's own groups (two tight blobs -> two tags), same seed same tags."""
    rng = np.random.default_rng(0)
    emb = np.vstack([rng.normal([1, 0, 0], 0.01, (10, 3)), rng.normal([0, 1, 0], 0.01, (10, 3))])
    tags = ClusterTagger(2, seed=1).tag([""] * 20, emb)
    assert len(set(tags[:10])) == 1 and len(set(tags[10:])) == 1 and tags[0] != tags[10]
    assert tags == ClusterTagger(2, seed=1).tag([""] * 20, emb) and tags[0].startswith("c")
    assert ClusterTagger(5).tag(["a", "b"], np.ones((2, 3))) == ["c00", "c00"]  # fewer distinct points than k
    with pytest.raises(ValueError):
        ClusterTagger(1)
