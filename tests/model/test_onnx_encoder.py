"""The encoder on ONNX Runtime: same token ids and (within tolerance) the same embeddings as torch on real prompts,
int8 close enough to route alike, a saved router that routes identically on either backend, and older router
folders without an export still loading. The first run exports the bundled MiniLM (~20-30 s, then cached per
machine by weights digest); the trained router's own export is made once when the session fixture saves it."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from mixllm.data import load_routerbench
from mixllm.embeddings import EmbeddingCache, QueryEncoder
from mixllm.exceptions import ConfigError

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def prompts(routerbench_dir) -> list[str]:
    """Real test prompts, long few-shot ones (truncated at 128 tokens) and short ones."""
    unique = list(dict.fromkeys(load_routerbench(routerbench_dir, "test").drop_duplicates("task")["prompt"]))
    log = load_routerbench(routerbench_dir, "test")
    by_task = log.drop_duplicates("query_id").groupby("task").head(4)["prompt"].tolist()
    return list(dict.fromkeys(unique + by_task + ["What is 2 + 2?", "Translate 'merci' into English."]))


@pytest.fixture(scope="module")
def torch_encoder() -> QueryEncoder:
    return QueryEncoder.base(128, "tail", backend="torch")


@pytest.mark.parametrize("side", ["head", "tail"])
def test_onnx_matches_torch_token_ids_and_embeddings(torch_encoder, prompts, side):
    torch_encoder.truncation = side
    onnx = QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="onnx", precision="fp32")
    onnx.truncation = side
    assert max(len(torch_encoder.model.tokenizer(p)["input_ids"]) for p in prompts) > 128  # some are truncated
    session = onnx.onnx_session()
    expected = [torch_encoder.model.preprocess([p])["input_ids"][0].tolist() for p in prompts]
    assert session.token_ids(prompts, 128, side) == expected
    ref, got = torch_encoder.encode(prompts), onnx.encode(prompts)
    assert np.abs(ref - got).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    torch_encoder.truncation = "tail"


def test_length_buckets_give_each_text_its_own_vector_in_any_order(torch_encoder, prompts):
    """ONNX batches by token count (`length_buckets`): every batch holds texts within BUCKET_MIN_SHARE of its
    longest, each text gets the vector it gets alone, and the batches depend on the set of texts, not their order."""
    from mixllm.onnx_encoder import BUCKET_MIN_SHARE, length_buckets

    assert length_buckets([10, 10, 9, 8, 5, 5, 1], 2) == [[0, 1], [2], [3], [4, 5], [6]]  # 8 < 0.9 x 9
    lengths = sorted((len(t) for t in torch_encoder.model.tokenizer(prompts)["input_ids"]), reverse=True)
    for chunk in length_buckets(lengths, 64):
        assert lengths[chunk[-1]] >= BUCKET_MIN_SHARE * lengths[chunk[0]]
    onnx = QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="onnx", precision="fp32")
    onnx.truncation = "tail"
    batched = onnx.encode(prompts)
    alone = np.stack([onnx.encode([p])[0] for p in prompts])
    assert np.abs(batched - alone).max() < 1e-5
    rev = onnx.encode(prompts[::-1])[::-1]
    assert np.array_equal(batched, rev)


def test_int8_is_close_and_smaller(torch_encoder, prompts):
    int8 = QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="onnx", precision="int8")
    int8.truncation = "tail"
    cos = (torch_encoder.encode(prompts) * int8.encode(prompts)).sum(1)
    assert cos.min() > 0.97 and cos.mean() > 0.99
    fp32 = QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="onnx", precision="fp32")
    assert int8.onnx_session().path.stat().st_size < 0.8 * fp32.onnx_session().path.stat().st_size


def test_cache_key_includes_backend_and_precision(torch_encoder, tmp_path):
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    encoders = [torch_encoder] + [QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="onnx",
                                               precision=p) for p in ("fp32", "int8")]
    for enc in encoders:
        enc.truncation = "tail"
        enc.encode(["alpha beta"], cache)
    assert len({enc._key("alpha beta") for enc in encoders}) == 3 and len(cache) == 3


def test_backend_resolution_and_bad_values(monkeypatch, torch_encoder):
    monkeypatch.setenv("MIXLLM_ENCODER_BACKEND", "onnx")
    assert QueryEncoder(torch_encoder.model, torch_encoder.weights_id).backend == "onnx"
    assert QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="torch").backend == "torch"
    monkeypatch.setenv("MIXLLM_ENCODER_BACKEND", "tensorflow")
    with pytest.raises(ConfigError, match="backend"):
        QueryEncoder(torch_encoder.model, torch_encoder.weights_id)
    monkeypatch.delenv("MIXLLM_ENCODER_BACKEND")
    with pytest.raises(ConfigError, match="precision"):
        QueryEncoder(torch_encoder.model, torch_encoder.weights_id, precision="int4")


def test_torch_bf16_is_close_keyed_apart_and_saved_with_the_weights(torch_encoder, prompts, tmp_path):
    """bf16 (torch autocast): within cos 0.9999 of fp32 on real prompts (int8 ONNX: 0.99), its own cache keys, and a
    saved encoder loads on torch at the precision it was saved with unless told otherwise; ONNX refuses it."""
    bf16 = QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="torch", precision="bf16")
    bf16.truncation = "tail"
    ref, got = torch_encoder.encode(prompts), bf16.encode(prompts)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert (ref * got).sum(1).min() > 0.9999
    assert bf16._key("alpha") != torch_encoder._key("alpha")
    saved = bf16.save(tmp_path / "enc", onnx=False)
    assert QueryEncoder.load(saved).precision == "bf16"
    assert QueryEncoder.load(saved, precision="fp32").precision == "fp32"
    assert QueryEncoder.load(torch_encoder.save(tmp_path / "fp32", onnx=False)).precision == "fp32"
    with pytest.raises(ConfigError, match="bf16"):
        QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="onnx", precision="bf16")


def test_bulk_calls_run_at_the_bulk_precision_keyed_by_it(torch_encoder, prompts, tmp_path, monkeypatch):
    """An fp32 encoder's bulk call (>= BULK_MIN_PROMPTS prompts: training, evaluation) runs at the bulk precision
    and caches under that precision's keys; a small call (serving) stays fp32. bf16 runs on LeanBert (Linear
    weights stored in bf16, no transformers): exactly autocast's vectors over the model, padding included. "auto" follows the CPU flags. Cost: ~300 short prompts in bf16 and
    fp32 (~10 s)."""
    import torch

    from mixllm import embeddings

    assert embeddings.resolve_bulk_precision("auto") == ("bf16" if embeddings.cpu_has_bf16() else "fp32")
    monkeypatch.setenv("MIXLLM_ENCODER_BULK_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="bulk precision"):
        QueryEncoder(torch_encoder.model, torch_encoder.weights_id)
    monkeypatch.setenv("MIXLLM_ENCODER_BULK_PRECISION", "bf16")
    enc = QueryEncoder(torch_encoder.model, torch_encoder.weights_id, backend="torch")
    enc.truncation = "tail"
    bulk = [f"Question {i}: what is {i} + {i}?" for i in range(embeddings.BULK_MIN_PROMPTS)]
    assert (enc.engine_for(len(bulk)), enc.engine_for(len(bulk) - 1)) == (("torch", "bf16"), ("torch", "fp32"))
    assert QueryEncoder(torch_encoder.model, torch_encoder.weights_id, precision="int8", backend="onnx") \
        .engine_for(len(bulk)) == ("onnx", "int8")
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    got = enc.encode(bulk, cache)
    keys = {enc._key(p, "torch", "bf16") for p in bulk}
    assert set(cache.get_many(list(keys))) == keys
    assert not cache.get_many([enc._key(bulk[0])])  # the fp32 key of the same prompt is another entry
    assert np.array_equal(got, enc._embed(bulk, 64, False, "bf16"))
    small = enc.encode(bulk[:3], cache)
    assert np.array_equal(small, enc._embed(bulk[:3], 64, False, "fp32")) and len(cache) == len(bulk) + 3
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = enc.model.preprocess(prompts[:8])
        auto = torch.nn.functional.normalize(enc.model.forward(feats)["sentence_embedding"].float(), dim=-1)
        lean = enc._lean_model().forward(feats["input_ids"], feats["attention_mask"])
        lean = torch.nn.functional.normalize(lean.float(), dim=-1)
    assert feats["attention_mask"].min() == 0 and torch.equal(auto, lean)  # padded rows too


def test_hybrid_runs_one_query_on_onnx_and_batches_on_torch(trained_router_dir, prompts, monkeypatch):
    """Backend "hybrid": one prompt on the saved ONNX fp32 export (same vectors as torch fp32), two or more on torch
    bf16 where the bulk precision is bf16, else on ONNX too (torch never loaded); each keyed by what ran it; other
    precisions refused. Cost: two encoder loads (~5 s)."""
    monkeypatch.setenv("MIXLLM_ENCODER_BULK_PRECISION", "fp32")  # a CPU without bf16
    plain = QueryEncoder.load(trained_router_dir / "encoder", backend="hybrid")
    plain.truncation = "tail"
    assert (plain.engine_for(2), plain.engine_for(300)) == (("onnx", "fp32"), ("onnx", "fp32"))
    assert np.abs(plain.encode(prompts[:3]) - plain._embed(prompts[:3], 64, False, "fp32", "torch")).max() < 1e-5
    monkeypatch.setenv("MIXLLM_ENCODER_BULK_PRECISION", "bf16")
    hybrid = QueryEncoder.load(trained_router_dir / "encoder", backend="hybrid")
    hybrid.truncation = "tail"
    assert (hybrid.engine_for(1), hybrid.engine_for(2)) == (("onnx", "fp32"), ("torch", "bf16"))
    one = hybrid.encode(prompts[:1])
    assert np.array_equal(one, hybrid.onnx_session().embed(prompts[:1], hybrid.max_seq_length, "tail", 64))
    three = hybrid.encode(prompts[:3])
    assert np.array_equal(three, hybrid._embed(prompts[:3], 64, False, "bf16"))
    assert hybrid._model is None  # batches on LeanBert over the saved weights: the torch model's vectors
    on_torch = QueryEncoder.load(trained_router_dir / "encoder", backend="torch")
    on_torch.truncation = "tail"
    assert np.array_equal(three, on_torch._embed(prompts[:3], 64, False, "bf16"))
    assert np.abs(one - hybrid._embed(prompts[:1], 64, False, "fp32", "torch")).max() < 1e-5
    assert hybrid._key("a") != hybrid._key("a", "torch", "bf16")
    with pytest.raises(ConfigError, match="hybrid"):
        QueryEncoder.load(trained_router_dir / "encoder", backend="hybrid", precision="int8")


def _decisions(router, prompts):
    return [d.model for d in router.route(prompts, willingness_to_pay=1000.0)]


def test_saved_router_routes_alike_on_either_backend(trained_router_dir, prompts):
    from mixllm.router import MixLLMRouter

    folder = trained_router_dir / "encoder"
    precision = next(iter(__import__("json").loads((folder / "onnx.json").read_text())["files"]))
    on_torch = MixLLMRouter.load(trained_router_dir, backend="torch")
    on_onnx = MixLLMRouter.load(trained_router_dir, backend="onnx")
    assert on_torch.encoder.backend == "torch" and on_onnx.encoder.backend == "onnx"
    assert on_onnx.encoder._model is None  # served from the saved export: no torch weights loaded
    assert on_onnx.encoder.truncation == on_torch.encoder.truncation == on_torch.config.truncation
    a, b = on_torch.encoder.encode(prompts), on_onnx.encoder.encode(prompts)
    assert (a * b).sum(1).min() > (0.9999 if precision == "fp32" else 0.97)
    assert _decisions(on_torch, prompts) == _decisions(on_onnx, prompts)


def test_router_folder_without_onnx_export_still_loads(trained_router_dir, prompts, tmp_path, monkeypatch):
    from mixllm.router import MixLLMRouter

    old = shutil.copytree(trained_router_dir, tmp_path / "old")
    for f in (old / "encoder").glob("*.onnx"):
        f.unlink()
    (old / "encoder" / "onnx.json").unlink()
    monkeypatch.delenv("MIXLLM_ENCODER_BACKEND", raising=False)
    import mixllm.embeddings as emb

    monkeypatch.setattr(emb, "DEFAULT_BACKEND", "onnx")  # ONNX only by default: an old folder loads on torch
    assert MixLLMRouter.load(old).encoder.backend == "torch"
    asked = MixLLMRouter.load(old, backend="onnx")  # asked for: exported (or taken from the per-machine cache)
    assert asked.encoder.backend == "onnx"
    assert _decisions(asked, prompts) == _decisions(MixLLMRouter.load(trained_router_dir, backend="torch"), prompts)


def test_onnx_loaded_encoder_fetches_torch_weights_only_when_needed(trained_router_dir, prompts):
    enc = QueryEncoder.load(trained_router_dir / "encoder", backend="onnx")
    before = enc.encode(prompts[:3])
    assert enc._model is None
    enc.backend = "torch"  # e.g. fine-tuning further: the torch model is loaded from the same folder
    np.testing.assert_allclose(enc.encode(prompts[:3]), before, atol=0.05)
    assert enc._model is not None and enc.model.max_seq_length == enc.max_seq_length


def test_onnx_serving_path_does_not_import_torch(trained_router_dir):
    import subprocess

    from mixllm.embeddings import resolve_bulk_precision

    code = ("import sys; from mixllm.embeddings import QueryEncoder; "
            "e = QueryEncoder.load(sys.argv[1], backend='onnx'); e.encode(['hello there']); "
            "print('torch' in sys.modules); "
            "h = QueryEncoder.load(sys.argv[1], backend='hybrid'); h.encode(['hello there', 'and a batch']); "
            "print('transformers' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(trained_router_dir / "encoder")], capture_output=True,
                         text=True, check=True)
    # hybrid: bf16 batches on LeanBert (torch without transformers), else batches on ONNX too (no torch)
    assert out.stdout.split() == ["False", "False", str(resolve_bulk_precision() == "bf16")]


def test_export_cache_keeps_the_most_recently_used(tmp_path):
    import os

    from mixllm.onnx_encoder import prune_cache

    for i in range(5):
        f = tmp_path / f"w{i}-model.onnx"
        f.write_bytes(b"graph")
        os.utime(f, (1000 + i, 1000 + i))
    os.utime(tmp_path / "w0-model.onnx", (2000, 2000))  # used again (a cache hit touches it)
    (tmp_path / ".w9-model.onnx.123.tmp.fp32.onnx").write_bytes(b"in progress")
    prune_cache(tmp_path, keep=2)
    assert sorted(f.name for f in tmp_path.iterdir()) == [".w9-model.onnx.123.tmp.fp32.onnx", "w0-model.onnx",
                                                          "w4-model.onnx"]
