"""MiniLM's bf16 forward pass in plain torch functions: what a serving process needs, without transformers.

Why: the hybrid serving backend (one query on ONNX Runtime, batches on torch bf16) held the whole SentenceTransformer
only to run its batches, and importing transformers + sentence-transformers costs ~100 MiB of RSS in the service on
top of torch, plus the fp32 copy of every Linear weight beside its bf16 twin (~42 MiB for MiniLM). This module keeps
only what a bf16 batch reads: the embedding tables and LayerNorms in fp32, the Linear weights in bf16, loaded from
the saved folder's `model.safetensors` (or from a loaded model's state dict); from a folder, the word-embedding
table (45 MiB) is paged in from a private file as traffic reads its rows (`_paged`).

Same vectors, not similar ones: each op is the one transformers' BertModel (sdpa attention, boolean padding mask)
and sentence-transformers' mean Pooling + Normalize run, in the same order and under the same bf16 autocast, so a
batch gives autocast's embeddings over the SentenceTransformer bit for bit (tests/model/test_onnx_encoder.py checks
it, padded rows included), and the AIQ measured for torch bf16 (BENCHMARKS.md "Encoder backends") holds for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mixllm.exceptions import ArtifactError

# What this module implements; a saved folder describing anything else stays on the SentenceTransformer.
_MODULES = ("Transformer", "Pooling", "Normalize")
_CONFIG = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False}


def supports(folder: Path) -> bool:
    """Whether `folder` (a saved encoder) is a BERT + mean pooling + normalise model this module runs exactly."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    kinds = tuple(m.get("type", "").rsplit(".", 1)[-1] for m in modules)
    return (kinds == _MODULES and (folder / "model.safetensors").is_file()
            and all(config.get(k) == v for k, v in _CONFIG.items())
            and pooling.get("pooling_mode", "mean") == "mean" and pooling.get("include_prompt", True))


def fast_tokenizer(tokenizer_json: str, max_length: int, truncation: str) -> Any:
    """The model's fast tokenizer (`tokenizers`, no transformers) truncating as the torch path does; no padding
    (`LeanBert.embed` pads)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length, direction="left" if truncation == "tail" else "right")
    return tok


WORD_TABLE = "embeddings.word_embeddings.weight"


def _paged(array: np.ndarray) -> Any:
    """`array` (here the word-embedding table) as a tensor over a memory-mapped, unlinked temporary file: a row
    becomes resident when a token reads it, so the 30,522 x 384 fp32 table (45 MiB, MiniLM's largest tensor, which
    the ONNX session beside it holds too) costs a serving process only the rows its traffic uses. A private copy,
    not the router folder's file: a later write to that folder can never fault the mapping. Clean file pages: the
    OS can drop them under memory pressure and read them back."""
    import tempfile

    import torch

    with tempfile.TemporaryFile(prefix="mixllm-lean-") as f:
        np.ascontiguousarray(array).tofile(f)
        f.flush()
        mapped = np.memmap(f, dtype=array.dtype, mode="c", shape=array.shape)  # the map outlives the file handle
    return torch.from_numpy(mapped)


class LeanBert:
    """MiniLM (BERT encoder, mean pooling, L2 norm) as functional torch ops; Linear layers stored in bf16.

    Run `embed` under `torch.inference_mode()` and `torch.autocast("cpu", dtype=torch.bfloat16)`, as the torch
    bf16 path of `QueryEncoder._embed` does."""

    def __init__(self, tensors: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        import torch

        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.w: dict[str, Any] = {}
        for name, t in tensors.items():
            t = t.detach()
            linear = ".LayerNorm." not in name and not name.startswith("embeddings.") and "pooler" not in name
            self.w[name] = t.to(torch.bfloat16) if linear else t.float().contiguous()
        missing = [k for k in self._required() if k not in self.w]
        if missing:
            raise ArtifactError(f"encoder weights lack {missing[:3]}...; not a BERT encoder this module can run")

    @classmethod
    def from_folder(cls, folder: Path) -> "LeanBert":
        """From a saved folder: the word-embedding table paged (`_paged`), the other fp32 tensors copied, the
        Linear weights cast; then nothing refers to the folder's file.

        Why copy: safetensors maps the file, so a tensor kept from it would keep the whole mapping alive, with
        every page the bf16 cast read (the fp32 Linear weights, ~42 MiB) still resident, and a later write to the
        folder's file could fault the process."""
        import torch
        from safetensors.torch import load_file

        folder = Path(folder)
        tensors = load_file(str(folder / "model.safetensors"))
        lean = cls(tensors, json.loads((folder / "config.json").read_text()))
        del tensors
        for name, t in lean.w.items():
            if name == WORD_TABLE:
                lean.w[name] = _paged(t.numpy())
            elif t.dtype != torch.bfloat16:
                lean.w[name] = t.clone()
        return lean

    @classmethod
    def from_model(cls, model: Any) -> "LeanBert":
        """From a loaded SentenceTransformer (its first module's BertModel), sharing its fp32 tensors."""
        bert = model[0].auto_model
        config = bert.config.to_dict()
        kinds = tuple(type(m).__name__ for m in model)
        pooling = getattr(model[1], "pooling_mode", "mean") if len(model) > 1 else None
        if kinds != _MODULES or pooling not in ("mean", ("mean",)) or any(config.get(k) != v
                                                                           for k, v in _CONFIG.items()):
            raise ArtifactError(f"bf16 encoding runs BERT + mean pooling + normalise only, got modules {kinds}, "
                                f"pooling {pooling!r}, model type {config.get('model_type')!r}; use precision fp32")
        return cls(bert.state_dict(), config)

    def _required(self) -> list[str]:
        names = [WORD_TABLE, "embeddings.position_embeddings.weight",
                 "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight"]
        return names + [f"encoder.layer.{i}.output.dense.weight" for i in range(self.layers)]

    def _linear(self, x: Any, name: str) -> Any:
        import torch.nn.functional as F

        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def _norm(self, x: Any, name: str) -> Any:
        import torch.nn.functional as F

        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _embeddings(self, ids: Any) -> Any:
        import torch
        import torch.nn.functional as F

        w = self.w
        x = F.embedding(ids, w[WORD_TABLE])
        x = x + F.embedding(torch.zeros_like(ids), w["embeddings.token_type_embeddings.weight"])
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        x = x + F.embedding(positions, w["embeddings.position_embeddings.weight"])
        return self._norm(x, "embeddings.LayerNorm")

    def _layer(self, x: Any, mask: Any, i: int) -> Any:
        import torch.nn.functional as F

        p = f"encoder.layer.{i}"
        b, n, _ = x.shape
        split = (b, n, self.heads, -1)
        q, k, v = (self._linear(x, f"{p}.attention.self.{m}").view(*split).transpose(1, 2)
                   for m in ("query", "key", "value"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=q.shape[-1] ** -0.5,
                                           is_causal=False)
        a = a.transpose(1, 2).contiguous().reshape(b, n, -1).contiguous()
        x = self._norm(self._linear(a, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = F.gelu(self._linear(x, f"{p}.intermediate.dense"))
        return self._norm(self._linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")

    def forward(self, ids: Any, attention_mask: Any) -> Any:
        """Unit sentence embeddings [batch, hidden] (the Normalize module's output dtype: bf16 under autocast)."""
        import torch
        import torch.nn.functional as F

        x = self._embeddings(ids)
        b, n = ids.shape
        # transformers' bidirectional sdpa mask: None when nothing is padded, else a boolean (b, 1, n, n) mask
        mask = None if bool(attention_mask.all()) else \
            attention_mask.bool()[:, None, None, :].expand(b, 1, n, n)
        for i in range(self.layers):
            x = self._layer(x, mask, i)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        mean = ((x * m).sum(dim=1, dtype=acc) / torch.clamp(m.sum(dim=1, dtype=acc), min=1e-9)).to(x.dtype)
        return F.normalize(torch.cat([mean], dim=-1), p=2, dim=-1)

    def embed(self, token_ids: list[list[int]]) -> Any:
        """Pad `token_ids` (one list per text, already truncated) to the longest and run `forward`."""
        import torch

        ids, mask = pad_token_ids(token_ids)
        return self.forward(torch.from_numpy(ids), torch.from_numpy(mask))


def pad_token_ids(token_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) as int64 [n, longest], zero-padded on the right: the one padding both the
    torch batches here and the ONNX sessions (`mixllm.onnx_encoder`) feed MiniLM, so their vectors stay the same."""
    width = max(len(t) for t in token_ids)
    ids = np.zeros((len(token_ids), width), np.int64)
    mask = np.zeros((len(token_ids), width), np.int64)
    for r, t in enumerate(token_ids):
        ids[r, :len(t)] = t
        mask[r, :len(t)] = 1
    return ids, mask
