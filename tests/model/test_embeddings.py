"""The real MiniLM encoder: prompt-digest cache, zero-shot tagger, tag-enhanced fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixllm.data import load_routerbench
from mixllm.embeddings import EmbeddingCache, QueryEncoder
from mixllm.tagging import TaxonomyTagger

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def encoder() -> QueryEncoder:
    return QueryEncoder.base(max_seq_length=128)


def test_cache_reencodes_only_new_prompts_and_is_keyed_by_weights(encoder, tmp_path):
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    first = encoder.encode(["alpha beta", "gamma delta"], cache)
    assert len(cache) == 2 and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    cache.put_many({encoder._key("alpha beta"): np.full(384, 7.0, np.float32)})  # planted: proves a cache hit
    again = encoder.encode(["alpha beta", "gamma delta", "epsilon"], cache)
    assert (again[0] == 7.0).all() and np.allclose(again[1], first[1]) and len(cache) == 3
    other = QueryEncoder(encoder.model, weights_id="other-weights")
    fresh = other.encode(["alpha beta"], cache)
    assert not (fresh[0] == 7.0).any() and len(cache) == 4


def test_taxonomy_tagger_assigns_coarse_domains(encoder):
    tagger = TaxonomyTagger(encoder.encode)
    prompts = ["Write a python function that returns the n-th Fibonacci number.",
               "Translate 'good morning, how are you?' into French.",
               "What are the symptoms of type 2 diabetes and how is it treated?"]
    assert tagger.tag(prompts, encoder.encode(prompts)) == ["coding", "translation", "medicine"]


def test_tag_enhanced_fine_tuning_separates_tags(routerbench_dir, tmp_path):
    log = load_routerbench(routerbench_dir, "train").drop_duplicates("query_id")
    sample = log.groupby("task").head(12)
    prompts, tags = sample["prompt"].tolist(), sample["task"].tolist()
    enc = QueryEncoder.base(max_seq_length=64)

    def margin(emb):  # mean same-tag cosine minus mean different-tag cosine
        t = np.array(tags)
        sim, same = emb @ emb.T, t[:, None] == t[None, :]
        return sim[same & ~np.eye(len(t), dtype=bool)].mean() - sim[~same].mean()

    before_id, before = enc.weights_id, margin(enc.encode(prompts))
    bert = enc.model[0].auto_model
    low, top = bert.encoder.layer[0].attention.self.query.weight.clone(), bert.encoder.layer[5].output.dense.weight.clone()
    enc.fine_tune(prompts, tags, epochs=2, batch_size=12, lr=1e-4, seed=0, progress=False, train_layers=2,
                  max_queries_per_epoch=30)
    assert enc.weights_id != before_id
    assert margin(enc.encode(prompts)) > before + 0.02
    # Only the top layers were trained (the CPU budget); every parameter is trainable again afterwards.
    assert torch.equal(bert.encoder.layer[0].attention.self.query.weight, low)
    assert not torch.equal(bert.encoder.layer[5].output.dense.weight, top)
    assert all(p.requires_grad for p in enc.model.parameters())
    again = QueryEncoder.load(enc.save(tmp_path / "enc"))
    assert again.weights_id == enc.weights_id
    np.testing.assert_allclose(again.encode(prompts[:3]), enc.encode(prompts[:3]), atol=1e-5)
