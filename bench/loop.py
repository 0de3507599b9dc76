"""Closed-loop benchmark: the live service, simulated users and the real nightly flow, day after day.

The world is a full-information log: the bundled RouterBench train files hold the true quality and cost of every
LLM on every query. A small seed of it (full information) trains night 0's router through the real pipeline in a
fresh MIXLLM_HOME (SQLite store and MLflow, Prefect's ephemeral API). Each simulated day, unseen world queries go
to `mixllm serve` over HTTP; simulated users send a thumbs rating (world quality >= 0.5, with label noise) and the
observed cost on a share of the answers via /feedback; each night `mixllm pipeline run` trains on the store, and
the service follows the champion alias by itself. What each decision earned comes from the world table.

Per day: mean quality and cost relative to the reference LLM, utility = quality - cost / wtp (the willingness to
pay the service routes at), regret against a full-information router trained offline on ALL world queries (same
wtp, same stream; its choices are scored on the same queries), the frozen seed router on the same stream, the
share of labelled decisions and each model's share. Each night's champion is also scored on the held-out test
files. Scenarios: `stationary`; `drift` (from the change day the model the service used most fails: world quality
0); `new_model` (one LLM is outside the catalogue and the world until the change day, then added to the catalogue
with its answers on the seed queries, as one would benchmark a new model before offering it).

Writes bench/results/loop.json (merged per scenario), bench/results/loop.png and the `loop` section of
BENCHMARKS.md. Usage:
  python bench/loop.py --scenario stationary [--days 10] [--queries-per-day 200] [--iid-stream] [--seed-share 0.05]
      [--feedback-share 0.3] [--noise 0.1] [--wtp 0.05] [--change-day 4] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mixllm itself comes from the environment

from loop_report import bars, publish, rounded  # noqa: E402 - bench/ is not a package
from loop_world import (REFERENCE, ROOT, SCENARIOS, Scenario, Service, World, choices_in, scored,  # noqa: E402
                        utility)

N_USERS = 50  # feedback comes from many simulated users (`source`), so per-source caps apply as in production


# ------------------------------------------------------------------------------------------- the loop --------
@dataclass
class Loop:
    """One scenario: its own MIXLLM_HOME, pipeline config, service and simulated users."""

    args: argparse.Namespace
    scenario: Scenario
    world: World
    test: World
    full: Any  # the full-information router, with its predictions on the world and the test queries
    full_pred: Any
    full_test_pred: Any
    seed_rows: np.ndarray
    stream: np.ndarray
    work: Path = field(init=False)
    failing: str | None = None
    nights: list[dict[str, Any]] = field(default_factory=list)
    days: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work = self.args.work / self.scenario.name
        if self.work.exists():
            shutil.rmtree(self.work)
        (self.work / "landing").mkdir(parents=True)
        self.rng = np.random.default_rng(self.args.seed + 7)

    # ------------------------------------------------------------------ files the pipeline reads
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXLLM_", "PREFECT_"))}
        env.update({"MIXLLM_HOME": str(self.work / "home"), "PREFECT_HOME": str(self.work / "prefect"),
                    "MIXLLM_CATALOGUE_PATH": str(self.work / "catalogue.yaml"),
                    "MIXLLM_DEFAULT_WILLINGNESS_TO_PAY": repr(self.args.wtp), "MIXLLM_POLL_SECONDS": "2",
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PREFECT_LOGGING_LEVEL": "INFO",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "true",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "BENTOML_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false"})
        env.update(self.args.service_env)
        return env

    def prepare_night(self, t: int) -> Path:
        """Catalogue, landing files and held-out slice of the world as it is on day t; returns the pipeline YAML."""
        from mixllm.catalogue import load_catalogue

        cat = load_catalogue()
        for m in set(cat.names) - set(self.scenario.catalogue(self.world, t)):
            cat = cat.without_llm(m)
        cat.save(self.work / "catalogue.yaml")
        models = self.scenario.catalogue(self.world, t)
        seed_q = self.scenario.quality(self.world, 0, None)  # the seed was benchmarked before any change
        landing = [self._write(self.work / "landing" / "seed.csv.gz",
                               self.world.rows_log(self.seed_rows, self.scenario.catalogue(self.world, 0), seed_q))]
        new = self.scenario.new_model
        if self.scenario.name == "new_model" and self.scenario.active(t):
            landing.append(self._write(self.work / "landing" / "new_model_seed.csv.gz",
                                       self.world.rows_log(self.seed_rows, (new,), seed_q)))
        test_q = self.scenario.quality(self.test, t, self.failing)
        held = self._write(self.work / f"heldout-{t}.csv.gz",
                           self.test.rows_log(np.arange(self.test.n), models, test_q))
        cfg = {"landing": [str(p) for p in landing], "test_paths": [str(held)], "build_bento": False,
               "baselines": list(self.args.baselines), "router": self.args.router, "seed": self.args.seed}
        if self.args.max_test_queries_per_task:
            cfg["max_test_queries_per_task"] = self.args.max_test_queries_per_task
        if self.args.known_noise:  # the rating mapping knows the users' noise rate (a graded sample measures it)
            cfg["feedback"] = {"mapping": {"noise": self.args.noise}}
        cfg.update(self.args.pipeline_extra)
        path = self.work / "pipeline.yaml"
        import yaml

        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return path

    @staticmethod
    def _write(path: Path, df: pd.DataFrame) -> Path:
        from mixllm.schemas import LOG_COLUMNS

        df[list(LOG_COLUMNS)].to_csv(path, index=False)
        return path

    def registry(self) -> Any:
        from mixllm.config import get_settings
        from mixllm.registry import Registry

        return Registry(get_settings(home=self.work / "home"))

    def night(self, n: int) -> dict[str, Any]:
        """The real nightly flow (`mixllm pipeline run`) on the store, then what it decided."""
        config = self.prepare_night(n)
        t0 = time.perf_counter()
        with open(self.work / f"night-{n}.log", "wb") as out:
            code = subprocess.call([str(Path(sys.executable).with_name("mixllm")), "pipeline", "run", "--config",
                                    str(config)], env=self.env(), cwd=self.work, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"night {n}: `mixllm pipeline run` exited {code}; see {self.work}/night-{n}.log")
        reg = self.registry()
        rows = reg.versions()
        newest = max(rows, key=lambda r: int(r["version"]))
        champion = reg.version_for("champion")
        rec = {"night": n, "seconds": round(seconds, 1), "version": str(newest["version"]),
               "champion": champion, "promoted": champion == str(newest["version"]),
               "gate_reason": newest["tags"].get("gate_reason", ""),
               "candidate": newest["tags"].get("candidate"), "probation": newest["tags"].get("probation"),
               "metrics": {k: v for k, v in newest["metrics"].items() if k.startswith("ope/")}}
        rec.update(self.champion_on_test(reg, champion, n + 1))
        print(f"[{self.scenario.name}] night {n}: {seconds:.0f}s, version {rec['version']}, champion {champion}"
              f"{'' if rec['promoted'] else ' (not promoted: ' + rec['gate_reason'][:160] + ')'}", flush=True)
        self.nights.append(rec)
        return rec

    def champion_on_test(self, reg: Any, version: str, t: int) -> dict[str, Any]:
        """The champion's (no online state) utility on the held-out test world of day t, next to the seed and
        full-information routers."""
        router = reg.load_router(version)  # the loader the service uses
        rows = np.arange(self.test.n)
        q = self.scenario.quality(self.test, t, self.failing)
        pred = predict(self.args, router, self.test.prompts)
        allowed = self.allowed(t)
        champ = scored(self.test, q, rows, choices_in(self.test, router, pred, rows, self.args.wtp, allowed),
                       self.args.wtp)
        self.champion_router = router  # serves the next day: the target of that day's off-policy estimate
        if not hasattr(self, "seed_router"):
            self.seed_router, self.seed_test_pred = router, pred
            self.seed_pred = predict(self.args, router, self.world.prompts)
        seed = scored(self.test, q, rows, choices_in(self.test, self.seed_router, self.seed_test_pred, rows,
                                                     self.args.wtp, allowed), self.args.wtp)
        full = scored(self.test, q, rows, choices_in(self.test, self.full, self.full_test_pred, rows,
                                                     self.args.wtp, self.full_allowed(t)), self.args.wtp)
        return {"test": {"champion": champ, "seed": seed, "full": full}}

    def allowed(self, t: int) -> tuple[str, ...]:
        return self.scenario.catalogue(self.world, t)

    def full_allowed(self, t: int) -> tuple[str, ...]:
        """The full-information router knows the world as it is: no failing model after the drift."""
        return tuple(m for m in self.allowed(t) if not (self.scenario.name == "drift" and self.scenario.active(t)
                                                        and m == self.failing))

    # ------------------------------------------------------------------ one simulated day
    def day(self, d: int, svc: Service, client: Any) -> dict[str, Any]:
        """Route the day's queries over HTTP in small batches, users rate a share, score every decision."""
        a, wtp = self.args, self.args.wtp
        rows = self.stream[(d - 1) * a.queries_per_day: d * a.queries_per_day]
        if self.scenario.name == "drift" and d == self.scenario.change_day:
            self.failing = self._most_used()
        q = self.scenario.quality(self.world, d, self.failing)
        t0 = time.perf_counter()
        decided: list[dict[str, Any]] = []
        for start in range(0, len(rows), a.batch):
            chunk = rows[start:start + a.batch]
            r = client.post(f"{svc.url}/route/batch", json={"prompts": [self.world.prompts[i] for i in chunk],
                                                            "willingness_to_pay": wtp}, timeout=120)
            r.raise_for_status()
            for i, dec in zip(chunk, r.json()["decisions"]):
                decided.append(self._feedback(svc, client, int(i), dec, q))
        seconds = time.perf_counter() - t0
        cols = np.array([self.world.col(x["model"]) for x in decided])
        served = scored(self.world, q, rows, cols, wtp)
        full_cols = choices_in(self.world, self.full, self.full_pred, rows, wtp, self.full_allowed(d))
        seed_cols = choices_in(self.world, self.seed_router, self.seed_pred, rows, wtp, self.allowed(d))
        rec = {"day": d, "queries": len(rows), "seconds": round(seconds, 1), "served": served,
               "full": scored(self.world, q, rows, full_cols, wtp), "seed": scored(self.world, q, rows, seed_cols, wtp),
               "labelled_share": float(np.mean([x["rating"] is not None for x in decided])),
               "explored_share": float(np.mean([x["explored"] for x in decided])),
               "share": _shares([x["model"] for x in decided]),
               "versions": sorted({str(x["source_version"]) for x in decided}),
               "util_per_query": {"served": utility(q[rows, cols], self.world.cost[rows, cols], wtp).tolist(),
                                  "full": utility(q[rows, full_cols], self.world.cost[rows, full_cols], wtp).tolist(),
                                  "seed": utility(q[rows, seed_cols], self.world.cost[rows, seed_cols], wtp).tolist()}}
        rec["regret"] = rec["full"]["utility"] - served["utility"]
        rec.update(self._watch(d, rows, decided, q, full_cols))
        svc.wait(client, None, timeout=120)  # the day's events are in the store
        rec.update(self.from_store(rows, decided, q))
        self.days.append(rec)
        self.decisions = getattr(self, "decisions", []) + [{**x, "day": d} for x in decided]
        print(f"[{self.scenario.name}] day {d}: utility served {served['utility']:.4f} seed "
              f"{rec['seed']['utility']:.4f} full {rec['full']['utility']:.4f}; quality "
              f"{served['relative_quality']:.1%} cost {served['relative_cost']:.1%} of {REFERENCE}; "
              f"explored {rec['explored_share']:.1%}; top {list(rec['share'].items())[:3]}; {seconds:.0f}s",
              flush=True)
        return rec

    def from_store(self, rows: np.ndarray, decided: list[dict[str, Any]], q: np.ndarray) -> dict[str, Any]:
        """The day's decisions as the service logged them (propensities: how much it explored) and mixllm.ope's
        doubly robust estimate of the champion as served (`ope_estimate`) on the labelled ones, next to that
        policy's true value on the same queries."""
        try:
            from mixllm import ope
            from mixllm.feedback import label_decisions
            from mixllm.store import Store
        except ImportError:
            return {}
        store = Store(f"sqlite:///{self.work / 'home' / 'store.db'}")
        try:
            logged = ope.logged_decisions(label_decisions(store.logs(), store.feedback(), self.feedback_config()).rows)
        finally:
            store.dispose()
        day = logged[logged["query_id"].isin({x["request_id"] for x in decided})]
        out: dict[str, Any] = {"logged": len(day), "mean_propensity": float(day["propensity"].mean())
                               if len(day) else None}
        labelled = day[day["quality"].notna() & day["cost_usd"].notna()]
        if len(labelled) >= 2:
            out["ope"] = self.ope_estimate(labelled, {x["request_id"]: x for x in decided}, q)
        return out

    def feedback_config(self) -> Any:
        """The snapshot's FeedbackConfig (the same labels as the nightly flow's training and OPE)."""
        from mixllm.feedback import FeedbackConfig, RatingMapping

        return FeedbackConfig(mapping=RatingMapping(noise=self.args.noise if self.args.known_noise else None))

    def ope_estimate(self, d: pd.DataFrame, by_id: dict[str, dict[str, Any]], q: np.ndarray) -> dict[str, Any]:
        """mixllm.ope's DR estimate of the champion AS SERVED, on the day's labelled logged decisions `d`, against
        that same policy's true value on the same queries (the world table is full-information).

        The target: the service's own policy at the moment it decided (the registered champion plus the online
        corrections it had learned by then, LinUCB bonus included) run greedily, i.e. without the exploration
        that logged the data. Why this target: it is what users are served, its probabilities are known exactly
        (one-hot on each decision's best-scoring eligible candidate, read from the decision's trace), and it
        overlaps the logging policy wherever the service did not explore, so the estimate is informative every
        day. It is not on-policy: explored decisions get weight 0, the others 1 / propensity, and DR's reward
        model (the served predicted quality - cost / wtp of every candidate) fills in for the explored ones; the
        rewards are users' debiased thumbs, the truth is the world's quality. The registered champion without its
        online state (what the gates compare) is also estimated (`registered`): its overlap with what was served
        is small (ESS 2-6 a day in the 2026-12-03 run), which is why it cannot be the day's bar."""
        from mixllm import ope

        wtp, models = self.args.wtp, self.world.models
        dec = [by_id[i] for i in d["query_id"]]
        at = np.array([x["row"] for x in dec])
        probs = np.zeros((len(d), len(models)))
        probs[np.arange(len(d)), [self.world.col(x["greedy"]) for x in dec]] = 1.0
        rhat = np.array([[x["reward_hat"].get(m, 0.0) for m in models] for x in dec])
        logged = np.array([self.world.col(m) for m in d["model"]])
        reward = d["quality"].to_numpy(float) - d["cost_usd"].to_numpy(float) / wtp
        prop = d["propensity"].to_numpy(float)
        est = ope.estimate(prop, reward, ope.TargetPolicy(probs, logged, rhat), "dr", min_ess=self.args.ope_min_ess)
        cols = probs.argmax(1)
        truth = float(utility(q[at, cols], self.world.cost[at, cols], wtp).mean())
        all_cols = np.array([self.world.col(by_id[k]["greedy"]) for k in by_id])
        all_rows = np.array([by_id[k]["row"] for k in by_id])
        return {"target": "champion as served, greedy", "estimate": est.value if est.available else None,
                "low": est.low if est.available else None, "high": est.high if est.available else None,
                "ess": est.ess, "n": est.n, "truth": truth, "logged_value": float(reward.mean()),
                "matched": int((logged == cols).sum()),
                "realised_all_queries": float(utility(q[all_rows, all_cols], self.world.cost[all_rows, all_cols],
                                                      wtp).mean()),
                "within_ci": bool(est.low <= truth <= est.high) if est.available else None,
                "registered": self.registered_estimate(d, at, prop, reward, q)}

    def registered_estimate(self, d: pd.DataFrame, at: np.ndarray, prop: np.ndarray, reward: np.ndarray,
                            q: np.ndarray) -> dict[str, Any]:
        """The registered champion (greedy, no online state: what the gates evaluate) on the same decisions."""
        from mixllm import ope, policy

        wtp, router = self.args.wtp, self.champion_router
        pred = predict(self.args, router, d["prompt"].tolist())
        probs = policy.probabilities(router.scores(pred, wtp, greedy=True), None)
        rhat = np.clip(np.nan_to_num(pred.quality), 0, 1) - np.nan_to_num(pred.cost) / wtp
        logged = np.array([router.models.index(m) if m in router.models else -1 for m in d["model"]])
        est = ope.estimate(prop, reward, ope.TargetPolicy(probs, logged, rhat), "dr", min_ess=self.args.ope_min_ess)
        cols = np.array([self.world.col(router.models[j]) for j in probs.argmax(1)])
        truth = float(utility(q[at, cols], self.world.cost[at, cols], wtp).mean())
        return {"estimate": est.value if est.available else None, "low": est.low if est.available else None,
                "high": est.high if est.available else None, "ess": est.ess, "truth": truth,
                "within_ci": bool(est.low <= truth <= est.high) if est.available else None}

    def _feedback(self, svc: Service, client: Any, i: int, dec: dict[str, Any], q: np.ndarray) -> dict[str, Any]:
        a = self.args
        j = self.world.col(dec["model"])
        eligible = [c for c in dec["candidates"] if c.get("eligible", True)]
        from mixllm.policy import PROBATION_REASON  # LLMs on probation are chosen by exploration only

        regular = [c for c in eligible if c.get("reason") != PROBATION_REASON] or eligible
        greedy = max(regular, key=lambda c: c["score"])["model"]  # the served policy's own choice, unexplored
        out = {"row": i, "request_id": dec["request_id"], "model": dec["model"], "quality": float(q[i, j]),
               "cost_usd": float(self.world.cost[i, j]), "source_version": dec.get("source_version"), "rating": None,
               "explored": dec["model"] != greedy, "greedy": greedy,
               "reward_hat": {c["model"]: float(c["predicted_quality"]) - float(c["predicted_cost_usd"]) / a.wtp
                              for c in eligible}}
        if self.rng.random() < a.feedback_share:
            rating = 1.0 if q[i, j] >= 0.5 else 0.0
            if self.rng.random() < a.noise:
                rating = 1.0 - rating
            body = {"request_id": dec["request_id"], "rating": rating, "cost_usd": float(self.world.cost[i, j]),
                    "source": f"user-{int(self.rng.integers(N_USERS))}"}
            r = client.post(f"{svc.url}/feedback", json=body, timeout=60)
            if r.status_code >= 300:
                raise RuntimeError(f"/feedback answered {r.status_code}: {r.text[:300]}")
            out["rating"] = rating
        return out

    def _most_used(self) -> str:
        """The model the service routed most to so far (the one the drift makes fail)."""
        counts = pd.Series([x["model"] for x in getattr(self, "decisions", [])]).value_counts()
        return str(counts.index[0]) if len(counts) else self.world.models[0]

    def _watch(self, d: int, rows: np.ndarray, decided: list[dict[str, Any]], q: np.ndarray,
               full_cols: np.ndarray) -> dict[str, Any]:
        """Scenario figures: the failing model's share within the day; the new model's share where it is best:
        where its world utility is the highest (a handful of queries a day: ties at quality 1 go to cheaper
        models) and where the full-information router (which knows its answers on all world queries) sends it."""
        out: dict[str, Any] = {}
        models = [x["model"] for x in decided]
        if self.scenario.name == "drift" and self.failing:
            half = len(models) // 2
            out["failing"] = {"model": self.failing, "share": _share(models, self.failing),
                              "first_half": _share(models[:half], self.failing),
                              "second_half": _share(models[half:], self.failing)}
        if self.scenario.name == "new_model" and self.scenario.active(d):
            new = self.scenario.new_model
            u = utility(q[rows], self.world.cost[rows], self.args.wtp)
            best = u.argmax(1) == self.world.col(new)
            picked = np.array([m == new for m in models])
            home = full_cols == self.world.col(new)
            out["new_model"] = {"model": new, "queries_where_best": int(best.sum()),
                                "share_where_best": float(picked[best].mean()) if best.any() else None,
                                "queries_where_full_router_picks_it": int(home.sum()),
                                "share_where_full_router_picks_it": float(picked[home].mean()) if home.any()
                                else None,
                                "share_elsewhere": float(picked[~best].mean()) if (~best).any() else None,
                                "share": float(picked.mean())}
        return out

    # ------------------------------------------------------------------ the whole run
    def run(self, on_day: Any = None) -> dict[str, Any]:
        """Night 0, then day / night until the last day; `on_day(partial result)` after each day, so an interrupted
        run still leaves its figures."""
        import httpx

        t_all = time.perf_counter()
        start_s = 0.0
        self.night(0)
        svc = Service(self.env(), self.work / "service.log")
        try:
            with httpx.Client() as client:
                t0 = time.perf_counter()
                svc.wait(client, self.nights[-1]["champion"], timeout=300)
                start_s = time.perf_counter() - t0
                for d in range(1, self.args.days + 1):
                    self.day(d, svc, client)
                    if on_day is not None:
                        on_day(self.result(start_s, t_all))
                    if d < self.args.days:
                        self.night(d)
                        svc.wait(client, self.nights[-1]["champion"], timeout=300)
        finally:
            svc.stop()
        return self.result(start_s, t_all)

    def result(self, start_s: float, t_all: float) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "work": str(self.work), "change_day": self.scenario.change_day,
                "failing_model": self.failing, "new_model": self.scenario.new_model,
                "nights": list(self.nights), "days": list(self.days), "service_start_s": round(start_s, 1),
                "total_s": round(time.perf_counter() - t_all, 1), "bars": bars(self)}


def _share(models: list[str], model: str) -> float:
    return float(np.mean([m == model for m in models])) if models else float("nan")


def _shares(models: list[str]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in pd.Series(models).value_counts(normalize=True).items()}


# ------------------------------------------------------------------------------------------------ main -------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=SCENARIOS, default="stationary")
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--queries-per-day", type=int, default=200)
    ap.add_argument("--seed-share", type=float, default=0.05)
    ap.add_argument("--feedback-share", type=float, default=0.3)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--unknown-noise", dest="known_noise", action="store_false", help="Do not tell the rating "
                    "mapping the users' noise rate (plain 0/1 labels, biased toward 1/2).")
    ap.add_argument("--wtp", type=float, default=0.05, help="Quality points per dollar the service routes at.")
    ap.add_argument("--change-day", type=int, default=4, help="drift / new_model: first day of the change.")
    ap.add_argument("--new-model", default=None, help="new_model: the LLM withheld (default: the one the "
                    "full-information router uses most on the stream, the reference excepted).")
    ap.add_argument("--epochs", type=int, default=0, help="Encoder fine-tuning epochs in each night's router.")
    ap.add_argument("--max-test-queries-per-task", type=int, default=None)
    ap.add_argument("--world-queries", type=int, default=None, help="Use only this many training queries.")
    ap.add_argument("--batch", type=int, default=10, help="Queries per /route/batch call (feedback follows each).")
    ap.add_argument("--exploration", default='{"mode": "softmax", "temperature": 0.02, "max_share": 0.1}',
                    help="RouterConfig.exploration of each night's router (JSON, or 'off').")
    ap.add_argument("--ope-min-ess", type=float, default=10.0, help="No OPE estimate below this effective sample "
                    "size (mixllm.ope.OPEConfig.min_ess's default).")
    ap.add_argument("--iid-stream", action="store_true", help="Draw every day's queries with replacement from the "
                    "world's unseen queries (a stationary stream in which kinds of queries recur, as in production), "
                    "so a run may route more decisions than the world has queries (e.g. 700 a day).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 days, 40 queries, a 600-query world, 20 held-out "
                    "queries per task: minutes, for the test.")
    ap.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one).")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-write", action="store_true", help="Do not touch BENCHMARKS.md.")
    args = ap.parse_args(argv)
    if args.quick:
        args.days, args.queries_per_day = min(args.days, 2), min(args.queries_per_day, 40)
        args.world_queries = args.world_queries or 600
        args.max_test_queries_per_task = args.max_test_queries_per_task or 20
        args.seed_share = max(args.seed_share, 0.1)
    args.work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"mixllm-loop-{os.getpid()}"
    args.router = {"epochs": args.epochs, "progress": False, "cache_dir": str(args.work / "embeddings")}
    args.baselines = ("random",)  # what the gates need (beat_baselines: [random]); the others cost time
    args.pipeline_extra, args.service_env, args.exploration_note = {}, {}, None
    from mixllm.router import RouterConfig

    if args.exploration != "off" and "exploration" in RouterConfig.model_fields:
        args.router["exploration"] = json.loads(args.exploration)
        args.exploration_note = f"exploration {args.router['exploration']}"
    elif args.exploration != "off":
        args.exploration_note = "exploration: not available in this checkout (greedy service)"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    from mixllm.telemetry import go_offline

    go_offline()
    t0 = time.perf_counter()
    world = World.load("train", args.world_queries, args.seed)
    test = World.load("test", None, args.seed)
    if args.max_test_queries_per_task:
        test = World.load("test", 3 * args.max_test_queries_per_task, args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(world.n)
    n_seed = max(int(round(args.seed_share * world.n)), 10)
    seed_rows, stream = np.sort(order[:n_seed]), order[n_seed:]
    need = args.days * args.queries_per_day
    if args.iid_stream:  # each day's queries drawn with replacement from the unseen ones (repeats, like production)
        stream = rng.choice(stream, need, replace=True)
    unique_streamed = int(len(np.unique(stream[:need])))
    if need > len(stream):
        raise SystemExit(f"{args.days} days x {args.queries_per_day} queries need {need} unseen queries; the world "
                         f"has {len(stream)} after the seed: fewer days or queries per day, or --iid-stream")
    args.work.mkdir(parents=True, exist_ok=True)
    full = full_information_router(args, world)  # trained on ALL world queries
    world_n = world.n
    world = world.subset(np.concatenate([seed_rows, stream[:need]]))  # what this run routes, nothing more
    seed_rows, stream = np.arange(n_seed), np.arange(n_seed, world.n)
    full_pred, full_test_pred = predict(args, full, world.prompts), predict(args, full, test.prompts)
    fit_s = time.perf_counter() - t0
    print(f"world {world_n} queries ({n_seed} seed, {world.n - n_seed} streamed), test {test.n}; full-information router fitted and "
          f"predicted in {fit_s:.0f}s", flush=True)
    new = None
    if args.scenario == "new_model":
        new = args.new_model or _favourite(world, full, full_pred, stream, args.wtp)
    scenario = Scenario(args.scenario, args.change_day, new)
    loop = Loop(args, scenario, world, test, full, full_pred, full_test_pred, seed_rows, stream)
    facts = {"machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
             "full_router_fit_s": round(fit_s, 1),
             "config": {"days": args.days, "queries_per_day": args.queries_per_day, "seed_share": args.seed_share,
                        "feedback_share": args.feedback_share, "noise": args.noise,
                        "noise_known_to_mapping": args.known_noise, "wtp": args.wtp,
                        "router": args.router | {"cache_dir": "<work>/embeddings"}, "world_queries": world_n,
                        "seed_queries": int(n_seed), "test_queries": test.n, "quick": args.quick,
                        "max_test_queries_per_task": args.max_test_queries_per_task,
                        "exploration": args.exploration_note, "users": N_USERS, "batch": args.batch,
                        "ope_min_ess": args.ope_min_ess, "iid_stream": args.iid_stream,
                        "unique_streamed_queries": unique_streamed}}

    def save(partial: dict[str, Any]) -> None:
        partial.update(facts, finished=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                       complete=len(partial["days"]) == args.days)
        publish(partial, args.out, not args.no_write)

    result = loop.run(on_day=save)
    save(result)
    for key, bar in result["bars"].items():
        verdict = "n/a" if bar.get("pass") is None else ("PASS" if bar["pass"] else "FAIL")
        print(f"BAR {args.scenario}/{key}: {verdict} {json.dumps(rounded({k: v for k, v in bar.items() if k != 'days'}))}")
    return result


def full_information_router(args: argparse.Namespace, world: World) -> Any:
    """The router trained on ALL world queries with the nights' router settings; saved in the working folder and
    reused by later runs on the same world and settings (it does not depend on the scenario)."""
    import hashlib

    from mixllm.router import MixLLMRouter, RouterConfig
    from mixllm.routers.registry import load_router

    settings = {k: v for k, v in args.router.items() if k != "cache_dir"}
    key = hashlib.sha256(json.dumps([sorted(world.query_ids.tolist()), settings], sort_keys=True)
                         .encode()).hexdigest()[:12]
    path = args.work / f"full-router-{key}"
    if (path / "manifest.json").is_file():
        return load_router(path)
    router = MixLLMRouter(RouterConfig(**args.router)).fit(world.log)
    router.save(path)
    return router


def predict(args: argparse.Namespace, router: Any, prompts: list[str]) -> Any:
    """router.predict through the run's embedding cache (the one the nights' pipeline fills): the bench's own
    predictions then encode each prompt once per run, not once per call (with --iid-stream a day repeats prompts)."""
    from mixllm.embedding_cache import EmbeddingCache

    with router.encoder.cached(EmbeddingCache(Path(args.router["cache_dir"]) / "cache.sqlite")):
        return router.predict(prompts)


def _favourite(world: World, full: Any, pred: Any, rows: np.ndarray, wtp: float) -> str:
    cols = choices_in(world, full, pred, rows, wtp, world.models)
    counts = pd.Series([world.models[c] for c in cols if world.models[c] != REFERENCE]).value_counts()
    return str(counts.index[0])


if __name__ == "__main__":
    main()

