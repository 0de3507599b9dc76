"""The tag adapter over frozen MiniLM embeddings (issue 16 item 2): real encoder, real bundled rows.

What it promises: seeded and deterministic; it separates tags better than the plain encoder on queries it did not
see; a router with representation="adapter" saves and loads to the same decisions, keeps the base encoder (so its
embeddings stay cacheable), uses one embedding space for kNN memory, tag centroids and serving; and a second night
with 5% new prompts sends only those prompts through MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixllm.adapter import TagAdapter
from mixllm.data import load_routerbench, load_training_log
from mixllm.embeddings import EmbeddingCache, QueryEncoder
from mixllm.exceptions import TrainingError
from mixllm.router import MixLLMRouter, RouterConfig

pytestmark = pytest.mark.model

LLMROUTER_TRAIN = Path(__file__).resolve().parents[2] / "data" / "llmrouter" / "llmrouter_train.csv.gz"


@pytest.fixture(scope="module")
def encoder() -> QueryEncoder:
    return QueryEncoder.base(max_seq_length=128, truncation="tail")


@pytest.fixture(scope="module")
def llmrouter_queries() -> pd.DataFrame:
    """30 queries of each of 6 LLMRouter tasks (some close: gsm8k / math / mgsm, mmlu / gpqa / commonsense_qa)."""
    tasks = ["gsm8k", "math", "agentverse-mgsm", "mmlu", "gpqa", "commonsense_qa"]
    q = load_training_log(LLMROUTER_TRAIN).drop_duplicates("query_id")
    return q[q["task"].isin(tasks)].groupby("task").head(30).reset_index(drop=True)


@pytest.fixture(scope="module")
def base_emb(encoder, llmrouter_queries, tmp_path_factory) -> np.ndarray:
    cache = EmbeddingCache(tmp_path_factory.mktemp("adapter-cache") / "cache.sqlite")
    return encoder.encode(llmrouter_queries["prompt"].tolist(), cache)


def _margin(emb: np.ndarray, tags: np.ndarray, ref: np.ndarray, ref_tags: np.ndarray) -> float:
    """Mean over queries of cos(own tag centroid) - max cos(other tag centroids); centroids from `ref`."""
    names = sorted(set(ref_tags))
    cent = np.stack([ref[ref_tags == n].mean(0) for n in names])
    sim = emb @ (cent / np.linalg.norm(cent, axis=1, keepdims=True)).T
    own = np.array([names.index(t) for t in tags])
    mine = sim[np.arange(len(emb)), own]
    sim[np.arange(len(emb)), own] = -np.inf
    return float((mine - sim.max(axis=1)).mean())


def test_fit_is_seeded_deterministic_and_transform_gives_unit_vectors(base_emb, llmrouter_queries):
    tags = llmrouter_queries["task"].to_numpy()
    a = TagAdapter(epochs=3, seed=0).fit(base_emb, tags)
    b = TagAdapter(epochs=3, seed=0).fit(base_emb, tags)
    c = TagAdapter(epochs=3, seed=1).fit(base_emb, tags)
    for wa, wb in ((a.w1_, b.w1_), (a.w2_, b.w2_), (a.b2_, b.b2_)):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.w1_, c.w1_)
    z = a.transform(base_emb)
    assert z.dtype == np.float32 and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(a.transform(base_emb[:1]), z[:1], atol=1e-6)  # a row does not depend on batch mates
    assert a.history_[-1] < a.history_[0]  # the tag losses went down
    assert not np.allclose(z, base_emb, atol=1e-3)  # and the map moved away from the identity it starts at
    with pytest.raises(TrainingError, match="two tags"):
        TagAdapter().fit(base_emb, ["one"] * len(base_emb))
    with pytest.raises(TrainingError, match="not fitted"):
        TagAdapter().transform(base_emb)


def test_adapter_separates_tags_of_unseen_queries_better_than_the_plain_encoder(base_emb, llmrouter_queries):
    """Trained on 20 queries per task, measured on the other 10: the margin between a query's own tag centroid and
    the nearest other one (cosine) must grow clearly, and nearest-centroid tagging must not get worse."""
    tags = llmrouter_queries["task"].to_numpy()
    held = llmrouter_queries.groupby("task").cumcount().to_numpy() >= 20
    adapter = TagAdapter(epochs=10, seed=0).fit(base_emb[~held], tags[~held])
    z = adapter.transform(base_emb)
    plain = _margin(base_emb[held], tags[held], base_emb[~held], tags[~held])
    tuned = _margin(z[held], tags[held], z[~held], tags[~held])
    assert tuned > plain + 0.05, (plain, tuned)

    def accuracy(e: np.ndarray) -> float:
        names = sorted(set(tags))
        cent = np.stack([e[~held & (tags == n)].mean(0) for n in names])
        return float((np.array(names)[np.argmax(e[held] @ cent.T, axis=1)] == tags[held]).mean())

    assert accuracy(z) >= accuracy(base_emb) - 1 / held.sum()


def _slice(routerbench_dir: Path, per_task: int) -> pd.DataFrame:
    log = load_routerbench(routerbench_dir, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(per_task)["query_id"]
    return log[log["query_id"].isin(keep)].reset_index(drop=True)


def test_adapter_router_round_trip_and_one_embedding_space(routerbench_dir, tmp_path):
    log = _slice(routerbench_dir, 14)
    router = MixLLMRouter(RouterConfig(representation="adapter", adapter_epochs=3, progress=False,
                                       cache_dir=tmp_path / "cache"))
    prepared = router.fit_representation(log)
    prompts = log.drop_duplicates("query_id")["prompt"].tolist()
    assert router.adapter is not None and router.encoder.weights_id == QueryEncoder.base().weights_id
    # the kNN memory, the centroids and serving share one space: what training stored is what serving computes
    np.testing.assert_allclose(np.sort(prepared.embeddings, axis=0), np.sort(router.embed(prompts), axis=0),
                               atol=1e-6)
    router.finish(prepared, [router.fit_llm(n, prepared) for n in prepared.names])
    assert router.manifest["representation"] == "adapter" and router.manifest["adapter_digest"]
    assert router.manifest["finetune_tags"] == {"arc-challenge": 14, "mbpp": 14, "winogrande": 14}
    test = load_routerbench(routerbench_dir, "test").drop_duplicates("query_id").groupby("task").head(5)
    again = MixLLMRouter.load(router.save(tmp_path / "router"))
    assert (tmp_path / "router" / "adapter" / "adapter.npz").is_file() and again.adapter is not None
    p1, p2 = router.predict(test["prompt"].tolist()), again.predict(test["prompt"].tolist())
    np.testing.assert_array_equal(p1.embeddings, p2.embeddings)
    np.testing.assert_array_equal(p1.quality, p2.quality)
    for wtp in (1e-4, 1e-2, 1.0):
        np.testing.assert_array_equal(router.choose(p1, wtp), again.choose(p2, wtp))
    assert router.fork().adapter is router.adapter  # what-if replays share the read-only map


def test_second_night_with_five_percent_new_prompts_encodes_only_those(routerbench_dir, tmp_path, monkeypatch):
    """Count the prompts that reach MiniLM (QueryEncoder._embed, the real method wrapped) on a re-fit: with the
    adapter only the new prompts; with fine-tuning every prompt again (its weights changed)."""
    log = _slice(routerbench_dir, 21)
    first_ids = log["query_id"].drop_duplicates()
    old = log[log["query_id"].isin(first_ids.iloc[: int(len(first_ids) * 0.95)])]
    n_new = log["prompt"].nunique() - old["prompt"].nunique()
    seen: list[int] = []
    real = QueryEncoder._embed

    def counting(self, texts, *args, **kwargs):
        seen.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(QueryEncoder, "_embed", counting)
    config = dict(progress=False, cache_dir=tmp_path / "cache", adapter_epochs=2)
    MixLLMRouter(RouterConfig(representation="adapter", **config)).fit(old)
    assert sum(seen) == old["prompt"].nunique()  # first night: every prompt once
    seen.clear()
    MixLLMRouter(RouterConfig(representation="adapter", **config)).fit(log)
    assert n_new > 0 and sum(seen) == n_new
    seen.clear()
    MixLLMRouter(RouterConfig(representation="finetune", finetune_max_queries=16, batch_size=8, **config)).fit(log)
    assert sum(seen) >= log["prompt"].nunique()  # fine-tuned weights: every prompt through MiniLM again
