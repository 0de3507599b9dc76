"""Tag adapter: MixLLM's tag-enhanced transform as a small learned map over FROZEN base MiniLM embeddings.

Why: fine-tuning the encoder changes its weights every night, so every prompt ever logged must be encoded again
with the new weights and a night costs what all the data costs. With the encoder frozen, base embeddings stay valid
forever (the EmbeddingCache serves them, the ONNX export never changes) and only new prompts reach MiniLM; the
tag-enhanced geometry is learned by this map instead, trained on the cached vectors in seconds.

The map: z = normalise(x + W2 relu(W1 x + b1) + b2), a residual 1-hidden-layer MLP whose output layer starts at
zero, so training starts from the plain encoder and moves away only as far as the losses ask. The losses are
`QueryEncoder.fine_tune`'s: intra-tag (softmax over query-to-tag-centroid cosines / temperature, target = the
query's own tag) and inter-tag (hinge on the cosine between batch centroids of different tags above a margin).
Centroids are recomputed over every query at the start of each epoch (no encoder forward: cheap), where fine-tuning
can only afford running means. Inference is numpy: two small matrix products per batch of queries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mixllm.exceptions import ArtifactError, TrainingError

_FILES = ("adapter.npz", "adapter.json")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class TagAdapter:
    """Residual MLP over unit base embeddings trained with the tag losses (sklearn-style: fit/transform).

    `__init__` stores parameters only; `fit` learns `w1_, b1_, w2_, b2_` (float32), `tags_` (sorted tag names)
    and `history_` (mean loss per epoch). Seeded: the same embeddings, tags and seed give the same weights.
    """

    def __init__(self, hidden: int = 256, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 1e-2, temperature: float = 0.1, inter_weight: float = 1.0,
                 inter_margin: float = 0.3, seed: int = 0) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.inter_weight = inter_weight
        self.inter_margin = inter_margin
        self.seed = seed

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("hidden", "epochs", "batch_size", "lr", "weight_decay",
                                              "temperature", "inter_weight", "inter_margin", "seed")}

    # ----------------------------------------------------------------------------------------------- fit --
    def fit(self, embeddings: np.ndarray, tags: Sequence[str]) -> "TagAdapter":
        """Learn the map from base embeddings [n, d] and one tag per row (needs at least two tags)."""
        import torch

        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or len(x) != len(tags) or not len(x):
            raise TrainingError(f"the adapter needs one tag per embedding row, got {x.shape} rows for "
                                f"{len(tags)} tags")
        self.tags_ = tuple(sorted(set(map(str, tags))))
        if len(self.tags_) < 2:
            raise TrainingError("the adapter needs at least two tags to separate")
        if self.hidden < 1 or self.epochs < 0 or self.batch_size < 2:
            raise TrainingError(f"invalid adapter parameters {self.get_params()}")
        label = np.searchsorted(np.array(self.tags_, dtype=object), np.array(list(map(str, tags)), dtype=object))
        gen = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        d = x.shape[1]
        w1 = (torch.randn(d, self.hidden, generator=gen, dtype=torch.float32) / np.sqrt(d)).requires_grad_(True)
        b1 = torch.zeros(self.hidden, dtype=torch.float32, requires_grad=True)
        w2 = torch.zeros(self.hidden, d, dtype=torch.float32, requires_grad=True)  # identity map at the start
        b2 = torch.zeros(d, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.AdamW([w1, b1, w2, b2], lr=self.lr, weight_decay=self.weight_decay)
        xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(label)
        self.history_: list[float] = []
        for _ in range(self.epochs):
            with torch.no_grad():
                cent = self._centroids(self._forward(xt, w1, b1, w2, b2), yt, len(self.tags_))
            losses = []
            for idx in np.array_split(rng.permutation(len(x)), max(1, int(np.ceil(len(x) / self.batch_size)))):
                loss = self._loss(self._forward(xt[idx], w1, b1, w2, b2), yt[idx], cent)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            self.history_.append(float(np.mean(losses)))
        self.w1_, self.b1_, self.w2_, self.b2_ = (t.detach().numpy().astype(np.float32) for t in (w1, b1, w2, b2))
        return self

    @staticmethod
    def _forward(x, w1, b1, w2, b2):
        import torch

        return torch.nn.functional.normalize(x + torch.relu(x @ w1 + b1) @ w2 + b2, dim=-1)

    @staticmethod
    def _centroids(z, y, k: int):
        import torch

        return torch.nn.functional.normalize(torch.stack([z[y == j].mean(0) for j in range(k)]), dim=-1)

    def _loss(self, z, y, cent):
        """fine_tune's losses: intra-tag cross-entropy against the centroids, inter-tag hinge on batch centroids."""
        import torch
        import torch.nn.functional as F

        loss = F.cross_entropy(z @ cent.T / self.temperature, y)
        present = torch.unique(y)
        if len(present) > 1:
            bc = F.normalize(torch.stack([z[y == k].mean(0) for k in present]), dim=-1)
            off = ~torch.eye(len(present), dtype=torch.bool)
            loss = loss + self.inter_weight * F.relu((bc @ bc.T)[off] - self.inter_margin).mean()
        return loss

    # --------------------------------------------------------------------------------------------- apply --
    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Tag-enhanced unit embeddings [n, d] (float32) from base embeddings; numpy only."""
        if not hasattr(self, "w1_"):
            raise TrainingError("the adapter is not fitted: call fit(embeddings, tags) or TagAdapter.load(dir)")
        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != self.w1_.shape[0]:
            raise TrainingError(f"adapter expects [n, {self.w1_.shape[0]}] embeddings, got {x.shape}")
        return _unit(x + np.maximum(x @ self.w1_ + self.b1_, 0.0) @ self.w2_ + self.b2_).astype(np.float32)

    def fit_transform(self, embeddings: np.ndarray, tags: Sequence[str]) -> np.ndarray:
        return self.fit(embeddings, tags).transform(embeddings)

    # ------------------------------------------------------------------------------------------ artifact --
    def save(self, directory: Path | str) -> Path:
        """Weights in adapter.npz, parameters / tags / loss history in adapter.json (no pickle)."""
        if not hasattr(self, "w1_"):
            raise TrainingError("cannot save an adapter that is not fitted")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / _FILES[0], w1=self.w1_, b1=self.b1_, w2=self.w2_, b2=self.b2_)
        (d / _FILES[1]).write_text(json.dumps({"params": self.get_params(), "tags": list(self.tags_),
                                               "history": self.history_}, indent=1))
        return d

    @classmethod
    def load(cls, directory: Path | str) -> "TagAdapter":
        d = Path(directory)
        try:
            meta = json.loads((d / _FILES[1]).read_text())
            adapter = cls(**meta["params"])
            with np.load(d / _FILES[0]) as f:
                adapter.w1_, adapter.b1_, adapter.w2_, adapter.b2_ = (f[k] for k in ("w1", "b1", "w2", "b2"))
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"{d}: not a saved tag adapter ({e}); re-save the router") from e
        adapter.tags_, adapter.history_ = tuple(meta["tags"]), list(meta["history"])
        return adapter

    def digest(self) -> str:
        """Identity of the learned weights (for the manifest)."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.w1_, self.b1_, self.w2_, self.b2_):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]
