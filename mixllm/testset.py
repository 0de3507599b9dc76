"""The test set: a log pivoted to one row per query and one column per LLM (quality, cost, completion tokens).

Its own module because both the evaluation (frontier metrics, the report) and the routers that learn from a
full-information log (the baselines in `mixllm.routers.baselines`, the oracle) read it; keeping it apart from both
is what lets `evaluation` import the routers without the routers importing `evaluation` back.

Unknown quality: "zero" (evaluation; RouterBench's ungraded cells earn no policy credit, and are counted) or
"keep" (NaN, for training: a router must not learn that an ungraded answer was wrong). A query with an unknown cost,
or with no row at all for some LLM, is excluded and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mixllm.exceptions import ContractError


@dataclass(frozen=True)
class TestSet:
    """A log pivoted to matrices: one row per query, one column per LLM (quality/cost/completion tokens)."""

    __test__ = False  # not a pytest test class despite the name

    query_ids: np.ndarray
    prompts: list[str]
    tasks: np.ndarray
    prompt_tokens: np.ndarray
    models: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    completion_tokens: np.ndarray
    excluded: int = 0
    imputed: int = 0

    @property
    def n(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_log(cls, log: pd.DataFrame, *, unknown_quality: str = "zero") -> "TestSet":
        """Pivot canonical log rows (see module docstring for unknown quality/cost; "keep" leaves NaN, for train)."""
        needed = {"query_id", "prompt", "model", "quality", "cost_usd"}
        missing = needed - set(log.columns)
        if missing:
            raise ContractError(f"evaluation log lacks columns {sorted(missing)}; pass canonical log rows "
                                "(mixllm.data.read_log / load_routerbench)")
        if log.empty:
            raise ContractError("evaluation log is empty; pass at least one query answered by every model")
        df = log.copy()
        for col, default in (("task", "all"), ("prompt_tokens", np.nan), ("completion_tokens", np.nan)):
            if col not in df.columns:
                df[col] = default
        # The store's nullable Int64 columns hold pd.NA where the service logged no tokens yet: plain floats here,
        # so the pivot below is numeric whatever the log's source.
        for col in ("quality", "cost_usd", "prompt_tokens", "completion_tokens"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        df["task"] = df["task"].fillna("all").astype(str)
        df["_key"] = df["query_id"].astype(str) + "\x00" + df["prompt"].astype(str)
        df = df.drop_duplicates(["_key", "model"], keep="last")
        wide = df.pivot(index="_key", columns="model", values=["quality", "cost_usd", "completion_tokens"])
        models = tuple(sorted(df["model"].astype(str).unique()))
        q = wide["quality"].reindex(columns=models).to_numpy(dtype=float, na_value=np.nan)
        c = wide["cost_usd"].reindex(columns=models).to_numpy(dtype=float, na_value=np.nan)
        ok = np.isfinite(c).all(axis=1)
        if not ok.any():
            raise ContractError("no query in the evaluation log has a cost for every model; "
                                "evaluation needs each test query answered by all candidate LLMs")
        if unknown_quality not in ("zero", "keep"):
            raise ValueError(f"unknown_quality must be 'zero' or 'keep', got {unknown_quality!r}")
        imputed = int(np.isnan(q[ok]).sum())
        if unknown_quality == "zero":
            q = np.nan_to_num(q, nan=0.0)
        first = df.drop_duplicates("_key").set_index("_key").reindex(wide.index)
        return cls(
            query_ids=first["query_id"].astype(str).to_numpy()[ok],
            prompts=first["prompt"].astype(str).to_numpy()[ok].tolist(),
            tasks=first["task"].to_numpy()[ok], prompt_tokens=first["prompt_tokens"].to_numpy(dtype=float, na_value=np.nan)[ok],
            models=models, quality=q[ok], cost=c[ok],
            completion_tokens=wide["completion_tokens"].reindex(columns=models).to_numpy(dtype=float, na_value=np.nan)[ok],
            excluded=int((~ok).sum()), imputed=imputed,
        )

    def outcome(self, choices: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
        """Mean (cost, quality) of per-query choices (index into models; -1 = none: 0 quality, 0 cost)."""
        costs, quals = self.outcomes(np.asarray(choices)[None, :], rows)
        return float(costs[0]), float(quals[0])

    def outcomes(self, choices: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean cost and quality per sweep point of `choices[k, n]`, over `rows` (default all queries)."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        ch = np.asarray(choices)[:, rows]
        safe, picked = np.clip(ch, 0, None), ch >= 0
        cost = np.where(picked, self.cost[rows][np.arange(len(rows)), safe], 0.0)
        qual = np.where(picked, self.quality[rows][np.arange(len(rows)), safe], 0.0)
        return cost.mean(axis=1), qual.mean(axis=1)


def prompt_token_list(test: TestSet) -> list[int] | None:
    """The test queries' prompt tokens as ints, or None when any is unknown (the router then estimates them)."""
    if np.isfinite(test.prompt_tokens).all():
        return [int(t) for t in test.prompt_tokens]
    return None
