"""The closed-loop benchmark's world (bench/loop.py): the full-information log every decision is scored
against, the scenarios that change it, and the service process the simulated users talk to."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "gpt-4-1106-preview"
SCENARIOS = ("stationary", "drift", "new_model")


# --------------------------------------------------------------------------------------------- the world -----
@dataclass
class World:
    """One row per query, one column per LLM: the truth every decision is scored against."""

    log: pd.DataFrame  # canonical rows of exactly these queries
    query_ids: np.ndarray
    prompts: list[str]
    models: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray

    @classmethod
    def load(cls, split: str, max_queries: int | None, seed: int) -> "World":
        """Queries with a known quality and cost for every LLM (the rest cannot be scored and are left out)."""
        from mixllm.data import load_routerbench
        from mixllm.evaluation import TestSet

        log = load_routerbench(ROOT / "data" / "routerbench", split)
        ts = TestSet.from_log(log, unknown_quality="keep")
        ok = np.flatnonzero(np.isfinite(ts.quality).all(1) & np.isfinite(ts.cost).all(1))
        if max_queries is not None and max_queries < len(ok):
            ok = np.sort(np.random.default_rng(seed).choice(ok, max_queries, replace=False))
        ids = ts.query_ids[ok]
        keep = log[log["query_id"].isin(set(ids))].reset_index(drop=True)
        return cls(keep, ids, [ts.prompts[i] for i in ok], ts.models, ts.quality[ok], ts.cost[ok])

    @property
    def n(self) -> int:
        return len(self.prompts)

    def subset(self, rows: np.ndarray) -> "World":
        """Only these queries, in this order (what a run routes: its seed and its stream)."""
        ids = self.query_ids[rows]
        log = self.log[self.log["query_id"].isin(set(ids))].reset_index(drop=True)
        return World(log, ids, [self.prompts[i] for i in rows], self.models, self.quality[rows], self.cost[rows])

    def col(self, model: str) -> int:
        return self.models.index(model)

    def rows_log(self, rows: np.ndarray, models: tuple[str, ...], quality: np.ndarray) -> pd.DataFrame:
        """Canonical log rows of some queries for some models, with the quality of the world as it is then."""
        ids = set(self.query_ids[rows])
        df = self.log[self.log["query_id"].isin(ids) & self.log["model"].isin(set(models))].copy()
        pos = {q: i for i, q in enumerate(self.query_ids)}
        df["quality"] = [quality[pos[q], self.col(m)] for q, m in zip(df["query_id"], df["model"])]
        return df


@dataclass(frozen=True)
class Scenario:
    """What changes in the world, and when (day `change_day` onwards; night n belongs to day n)."""

    name: str
    change_day: int
    new_model: str | None = None

    def active(self, t: int) -> bool:
        return self.name != "stationary" and t >= self.change_day

    def catalogue(self, world: World, t: int) -> tuple[str, ...]:
        hidden = self.new_model if self.name == "new_model" and not self.active(t) else None
        return tuple(m for m in world.models if m != hidden)

    def quality(self, world: World, t: int, failing: str | None) -> np.ndarray:
        q = world.quality.copy()
        if self.name == "drift" and self.active(t) and failing is not None:
            q[:, world.col(failing)] = 0.0
        return q


def utility(quality: np.ndarray, cost: np.ndarray, wtp: float) -> np.ndarray:
    """The routing objective the service maximises: quality points minus dollars converted at the wtp."""
    return quality - cost / wtp


def choices_in(world: World, router: Any, pred: Any, rows: np.ndarray, wtp: float,
               allowed: tuple[str, ...]) -> np.ndarray:
    """An offline router's greedy choices on some queries, as world columns, among the allowed models."""
    from mixllm.schemas import RouteConstraints

    allowed = tuple(m for m in allowed if m in router.models)
    idx = router.choose(_take(pred, rows), wtp, constraints=RouteConstraints(allowed_models=allowed))
    return np.array([world.col(router.models[j]) for j in idx])


def _take(pred: Any, rows: np.ndarray) -> Any:
    """The predictions of some queries (every per-query array sliced; the model list kept)."""
    import dataclasses

    n = len(pred.quality)
    return dataclasses.replace(pred, **{f.name: getattr(pred, f.name)[rows] for f in dataclasses.fields(pred)
                                        if isinstance(getattr(pred, f.name), np.ndarray)
                                        and getattr(pred, f.name).shape[:1] == (n,)})


def scored(world: World, q: np.ndarray, rows: np.ndarray, cols: np.ndarray, wtp: float) -> dict[str, float]:
    ref = world.col(REFERENCE)
    quality, cost = q[rows, cols], world.cost[rows, cols]
    return {"quality": float(quality.mean()), "cost_usd": float(cost.mean()),
            "relative_quality": float(quality.mean() / max(q[rows, ref].mean(), 1e-12)),
            "relative_cost": float(cost.mean() / world.cost[rows, ref].mean()),
            "utility": float(utility(quality, cost, wtp).mean())}


# ----------------------------------------------------------------------------------------- processes -------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`mixllm serve` in its own process group (so stopping it stops BentoML's workers too)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        """Started from the log's folder: nothing of the checkout is on its path but what the environment puts."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("mixllm")), "serve", "--port", str(self.port)],
                                     env=env, cwd=log_path.parent, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def status(self, client: Any) -> dict[str, Any] | None:
        import httpx

        try:
            r = client.get(f"{self.url}/readyz", timeout=10)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def wait(self, client: Any, version: str | None, timeout: float) -> dict[str, Any]:
        """Until the service is ready (serving `version` when given) and its outbox reached the store."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}; see {self._log.name}")
            st = self.status(client)
            if st and (version is None or str(st.get("source_version")) == version) \
                    and not st.get("outbox_pending"):
                return st
            time.sleep(1.0)
        raise TimeoutError(f"service at {self.url} not ready with version {version} after {timeout:.0f}s "
                           f"(last status {self.status(client)}); see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


