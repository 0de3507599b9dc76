"""Tags: the log's task wins; the pluggable tagger fills in only the untagged queries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixllm.tagging import (DOMAINS, SURFACE_FEATURES, ClusterTagger, SurfaceClusterTagger, TaxonomyTagger,
                            cluster_knn, outcome_tags, query_tags, split_clusters, surface_features)

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


def _two_styles(n: int = 20):
    """Prompts of one topic written two ways, with embeddings that cannot tell them apart, and outcomes that differ
    by the writing: LLM 0 answers the lower-case search queries, LLM 1 the capitalised questions."""
    rng = np.random.default_rng(0)
    prompts = [f"who wrote song number {i}" for i in range(n)] + [f"Which Town Hosts Festival {i}?" for i in range(n)]
    emb = rng.normal([1.0, 0.0, 0.0], 0.01, (2 * n, 3))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    quality = np.vstack([np.tile([1.0, 0.0], (n, 1)), np.tile([0.0, 1.0], (n, 1))])
    return prompts, emb, quality


def test_surface_features_tell_how_a_prompt_is_written():
    f = surface_features(["who wrote i will follow you", "Which Bavarian town stages a festival?",
                          "def f():\n  return 1"])
    assert f.shape == (3, len(SURFACE_FEATURES))
    col = {name: i for i, name in enumerate(SURFACE_FEATURES)}
    assert f[:, col["ends_question"]].tolist() == [0, 1, 0] and f[:, col["starts_lower"]].tolist() == [1, 0, 1]
    assert f[2, col["code_words"]] == 1 and f[2, col["log_newlines"]] > 0


def test_surface_tagger_separates_writing_styles_the_embedding_misses_and_outcomes_choose_the_count():
    prompts, emb, quality = _two_styles()
    tagger = SurfaceClusterTagger(grid=(2, 4), weight=2.0, k=5, smoothing=1.0).fit(prompts, emb, quality)
    tags = tagger.assign(emb, prompts)
    assert not set(tags[:20]) & set(tags[20:])  # no tag mixes the two styles
    assert set(tagger.errors_) == {2, 4}
    assert len(tagger.names_) == min(tagger.errors_, key=tagger.errors_.get)
    assert tagger.tag(["who wrote a new song"], emb[:1]) == [tags[0]]  # a new query: nearest centre, jointly
    small = SurfaceClusterTagger(grid=(2, 64), k=5, smoothing=1.0).fit(prompts, emb, quality)
    assert small.errors_[40] == np.inf and len(small.names_) == 2  # more clusters than a fold holds: never chosen
    blind = SurfaceClusterTagger(grid=(2,), weight=0.0, k=5, smoothing=1.0).fit(prompts, emb, quality)
    split = blind.assign(emb, prompts)  # embeddings only: the clusters mix the styles
    assert set(split[:20]) & set(split[20:])


def test_cluster_knn_is_the_within_cluster_neighbour_mean_shrunk_to_the_cluster_mean():
    prompts, emb, quality = _two_styles(4)
    labels = np.array([0] * 4 + [1] * 4)
    est = cluster_knn(emb, quality, labels, emb[:1], np.array([0]), k=4, smoothing=0.0)
    np.testing.assert_allclose(est, [[1.0, 0.0]])  # its cluster's four rows, none from the other
    prior = cluster_knn(emb, quality, labels, emb[:1], np.array([0]), k=4, smoothing=1e9)
    np.testing.assert_allclose(prior, [[(4 + 5 * 0.5) / 9, 5 * 0.5 / 9]], rtol=1e-6)  # cluster mean, 5 rows of global


def _two_workloads(n: int = 60, winners_differ: bool = True):
    """One k-means cluster holding two nearby workloads (embeddings 0.4 apart on one axis): LLM 0 wins the first,
    LLM 1 the second; or, when not `winners_differ`, both LLMs succeed at random in both."""
    rng = np.random.default_rng(1)
    emb = np.vstack([rng.normal([1.0, 0.2, 0.0], 0.05, (n, 3)), rng.normal([1.0, -0.2, 0.0], 0.05, (n, 3))])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    if winners_differ:
        quality = np.vstack([np.tile([1.0, 0.0], (n, 1)), np.tile([0.0, 1.0], (n, 1))])
    else:
        quality = (rng.random((2 * n, 2)) < 0.5).astype(float)
    return [f"prompt {i}" for i in range(2 * n)], emb, quality


def test_split_clusters_splits_where_the_winners_differ_and_nowhere_else():
    for how in ("outcomes", "joint"):
        prompts, emb, quality = _two_workloads()
        centres, kept = split_clusters(emb, emb, quality, emb.mean(0, keepdims=True), prompts, how=how, k=10,
                                       smoothing=1.0, min_rows=20, max_clusters=4)
        labels = np.argmin(((emb[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        assert kept >= 1 and not set(labels[:60]) & set(labels[60:])  # each workload its own cluster
        prompts, emb, quality = _two_workloads(winners_differ=False)
        centres, kept = split_clusters(emb, emb, quality, emb.mean(0, keepdims=True), prompts, how=how, k=10,
                                       smoothing=1.0, min_rows=20, max_clusters=4)
        assert kept == 0 and len(centres) == 1  # same outcomes on both sides: the split does not pay
    prompts, emb, quality = _two_workloads()
    tagger = SurfaceClusterTagger(grid=(2,), weight=0.0, k=10, smoothing=1.0, splits="outcomes",
                                  max_clusters=2).fit(prompts, emb, quality)
    assert len(tagger.names_) == 2  # the cap holds
