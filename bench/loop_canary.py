"""Closed-loop canary: real routers, the live service, simulated users and the real canary flow (issue 15 bar: a
worse challenger is rolled back before it has served 2% of the day's traffic; a better one is promoted within one
day).

The world is the bundled full-information RouterBench train log (bench/loop_world.py): the true quality and cost of
every LLM on every query. A traffic pool of it is held out from all training; the rest trains three routers
(`mixllm.router.MixLLMRouter`, default config):
- the champion: a small seed slice (`--seed-queries`);
- a worse challenger: the same-size slice with its labels corrupted (quality flipped, 1 - q: it learns to prefer
  the models that fail);
- a better challenger: the full-information router of bench/loop.py, trained on every world query (the pool
  included: it has seen the true quality of what users will ask, an upper bound on what more data buys);
- `more_data` (optional): every non-pool query, 15 times the seed; on RouterBench it is barely better than the
  champion (see the truth line of a run), too close for any canary to call within a day;
- `better_weak`: the full-information router against a weaker champion, the seed slice with the labels of
  `--weak-corrupt` (50%) of its queries flipped (0.667 true utility vs 0.826 on the pool: clearly better, as a real
  challenger trained on clean full data would be against a champion trained on a corrupted slice). The better
  challenger against the seed champion is only ~0.02 better: no canary can show that on a day's labels.
Each run gets a fresh MIXLLM_HOME (SQLite store and MLflow registry): the champion is registered and promoted, the
challenger registered (alias `challenger`), then `mixllm serve` starts with a canary share of sessions
(`MIXLLM_CANARY_SHARE`, `canary_cleared_share` as configured). A day is `--per-day` requests in 96 blocks of 15
minutes (Poisson per block); users come in sessions (geometric size, mean `--session-mean`, one `session_id`, so
the canary arm is sticky per session), ask pool queries over HTTP (/route), and a share of them send a thumb
(world quality >= 0.5, flipped with probability `--noise`) and the observed cost to /feedback. After each block the
real canary flow (`mixllm_flows.canary.canary`, Prefect ephemeral API) decides against the store and the registry,
and applies its verdict (tags, alias moves); the service follows by itself at its next alias poll (the bench waits
for it, as 15 minutes would in real time).

Time: a simulated day takes minutes, so the log's timestamps are real and compressed just after the challenger's
registration; each check passes its simulated time (registration + 15 min x block) as the flow's `now`. What the
rule reads from timestamps is then as in a real day: which decisions come after the canary's start, and how long the
log spans (its day's-traffic estimate: requests so far x 24 h / simulated hours since the first), off only by the
real time between registration and the first request (the service's start, a minute or two: the first checks
overestimate the day by up to ~10%, the budget look, hours later, by well under 1%). Hence one day at most per run
(`--max-hours` <= 24).

Per run: the verdict, its simulated hour, the challenger's requests until then as a share of the day's requests
(`--per-day`), its labels, and the true utility (world quality - cost / wtp) each arm earned. Writes
bench/results/loop_canary.json and the closed-loop part of BENCHMARKS.md's canary section (`--write`).

The bar holds (or not) at a day's size: `--per-day` (default 10,000 requests, a small production router's day;
the 2% budget is then 200 requests, several sessions' bursts; at 2,000 it is ~40, which one block of sessions can
overrun between two checks).

Usage: python bench/loop_canary.py [--runs 3] [--per-day 10000] [--challengers worse,better_weak] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mixllm itself comes from the environment

from loop_world import ROOT, Service, World, choices_in, scored, utility  # noqa: E402

CHALLENGERS = ("worse", "better", "more_data", "better_weak")  # order: the runs' seeds
CHECKS_PER_DAY = 96
CHECK = timedelta(minutes=15)
START, END = "<!-- canary-loop:start -->", "<!-- canary-loop:end -->"


# ------------------------------------------------------------------------------------------- the routers -----
def train_routers(args: argparse.Namespace, world: World, pool: np.ndarray, train: np.ndarray,
                  names: list[str]) -> dict[str, Path]:
    """Router directories of the champion (seed slice) and the challengers named: worse (corrupted slice), better
    (all world queries), more_data (all non-pool queries); trained once per working folder and world split."""
    from mixllm.router import MixLLMRouter, RouterConfig

    rng = np.random.default_rng(args.seed)
    seed = np.sort(rng.choice(train, args.seed_queries, replace=False))
    rest = np.setdiff1d(train, seed)
    worse = np.sort(rng.choice(rest, args.seed_queries, replace=False))
    flipped = world.rows_log(worse, world.models, 1.0 - world.quality)  # labels corrupted: quality inverted
    noisy = world.quality.copy()  # the weak champion: the seed slice, a share of its queries' labels inverted
    bad = seed[rng.random(len(seed)) < args.weak_corrupt]
    noisy[bad] = 1.0 - noisy[bad]
    logs = {"champion": world.rows_log(seed, world.models, world.quality), "worse": flipped,
            "better": world.rows_log(np.arange(world.n), world.models, world.quality),
            "more_data": world.rows_log(train, world.models, world.quality),
            "weak": world.rows_log(seed, world.models, noisy)}
    out = {}
    for name, log in logs.items():
        if name not in names:
            continue
        tag = f"-{args.weak_corrupt:g}" if name == "weak" else ""
        path = args.work / "routers" / f"{name}-{args.seed}-{args.seed_queries}-{len(pool)}-{log['query_id'].nunique()}{tag}"
        if not (path / "manifest.json").is_file():
            t0 = time.perf_counter()
            cfg = RouterConfig(progress=False, cache_dir=args.work / "embeddings")
            MixLLMRouter(cfg).fit(log).save(path)
            print(f"router {name}: {log['query_id'].nunique()} queries, fitted in {time.perf_counter() - t0:.0f}s",
                  flush=True)
        out[name] = path
    return out


def truth(world: World, dirs: dict[str, Path], pool: np.ndarray, wtp: float) -> dict[str, dict[str, float]]:
    """Each router's true value on the traffic pool (greedy, no online state): how far apart the arms are."""
    from mixllm.routers.registry import load_router

    out = {}
    for name, path in dirs.items():
        cache = path / f"truth-{len(pool)}-{int(pool.sum())}-{wtp:g}.json"  # the router directory is fixed once fitted
        if cache.is_file():
            out[name] = json.loads(cache.read_text(encoding="utf-8"))
            continue
        router = load_router(path)
        pred = router.predict([world.prompts[i] for i in pool])
        cols = choices_in(world, router, pred, np.arange(len(pool)), wtp, world.models)
        out[name] = scored(world, world.quality, pool, cols, wtp)
        cache.write_text(json.dumps(out[name]), encoding="utf-8")
    return out


def champion_of(challenger: str) -> str:
    """The router a challenger kind runs against: the weak champion for `better_weak`, else the seed champion."""
    return "weak" if challenger == "better_weak" else "champion"


def challenger_dir(challenger: str) -> str:
    return "better" if challenger == "better_weak" else challenger


# ------------------------------------------------------------------------------------------- one canary ------
class Run:
    """One canary: a fresh home, champion + challenger registered, the service, a day of users, the flow."""

    def __init__(self, args: argparse.Namespace, world: World, pool: np.ndarray, dirs: dict[str, Path],
                 challenger: str, k: int) -> None:
        self.args, self.world, self.pool, self.dirs, self.challenger, self.k = args, world, pool, dirs, challenger, k
        self.work = args.work / f"run-{challenger}-{k}"
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.rng = np.random.default_rng([args.seed, k, CHALLENGERS.index(challenger)])
        self.decisions: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXLLM_", "PREFECT_"))}
        env.update({"MIXLLM_HOME": str(self.work / "home"), "PREFECT_HOME": str(self.args.work / "prefect"),
                    "MIXLLM_DEFAULT_WILLINGNESS_TO_PAY": repr(self.args.wtp), "MIXLLM_POLL_SECONDS": "1",
                    "MIXLLM_CANARY_SHARE": repr(self.args.share),
                    "MIXLLM_CANARY_SALT": f"run-{self.args.seed}-{self.k}",
                    "MIXLLM_CANARY_CLEARED_SHARE": repr(self.args.cleared_share),
                    # the forwarder process runs at SCHED_IDLE and starves on a busy shared machine: a thread (at the
                    # service's priority) lands each block in the store before its check
                    "MIXLLM_FORWARDER": "thread",
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PREFECT_LOGGING_LEVEL": "WARNING",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "true",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "BENTOML_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false"})
        return env

    def register(self) -> tuple[str, str, datetime]:
        """Champion v1 (promoted), challenger v2 (alias `challenger`); the canary's clock starts at v2's
        registration."""
        from mixllm.config import get_settings
        from mixllm.registry import Registry

        reg = Registry(get_settings())
        v1 = reg.log_candidate(self.dirs[champion_of(self.challenger)], None, "0" * 64,
                               run_name=f"champion-{champion_of(self.challenger)}")
        reg.promote(v1, reason="bench/loop_canary.py seed champion", who="bench")
        v2 = reg.log_candidate(self.dirs[challenger_dir(self.challenger)], None, "1" * 64,
                               run_name=f"challenger-{self.challenger}")
        created = reg.client.get_model_version(reg.name, v2).creation_timestamp
        return v1, v2, datetime.fromtimestamp(created / 1000, tz=timezone.utc)

    def run(self, on_check: Any = None) -> dict[str, Any]:
        """The canary until its verdict or `--max-hours`; `on_check(partial summary)` after every check, so an
        interrupted run still leaves its figures."""
        import httpx

        os.environ.update(self.env())  # the flow reads its settings (home, wtp) from the environment
        t0 = time.perf_counter()
        v1, v2, t_start = self.register()
        svc = Service(self.env(), self.work / "service.log")
        verdict: dict[str, Any] = {"verdict": "extend", "hour": None}
        try:
            with httpx.Client(timeout=120) as client:
                status = svc.wait(client, v1, timeout=300)
                self._wait_canary(svc, client, lambda c: c.get("active"), "the canary to start")
                print(f"[{self.challenger} {self.k}] service ready ({time.perf_counter() - t0:.0f}s): {status}",
                      flush=True)
                for block in range(1, self.args.checks + 1):
                    t1 = time.perf_counter()
                    self.day_block(block, svc, client)
                    t2 = time.perf_counter()
                    svc.wait(client, None, timeout=120)  # the block's decisions and feedback are in the store
                    out = self.check(block, t_start)
                    out.update(users_s=round(t2 - t1, 2),
                               store_wait_s=round(time.perf_counter() - t2 - out["seconds"], 2))
                    if out["verdict"] in ("promote", "rollback", "expire"):
                        verdict = {"verdict": out["verdict"], "hour": block * CHECK.total_seconds() / 3600}
                        break
                    if on_check is not None:
                        on_check(self.summary({"verdict": "extend", "hour": None, "partial": True}, v1, v2,
                                              time.perf_counter() - t0))
                    if out["cleared"] and not (self.checks[-2]["cleared"] if len(self.checks) > 1 else False):
                        self._wait_canary(svc, client, lambda c: c.get("cleared"), "the cleared share")
        finally:
            svc.stop()
        return self.summary(verdict, v1, v2, time.perf_counter() - t0)

    def _wait_canary(self, svc: Service, client: Any, ok: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = svc.status(client) or {}
            if ok(st.get("canary", {})):
                return
            time.sleep(0.5)
        raise TimeoutError(f"service did not show {what} in 60 s: {svc.status(client)}")

    # ------------------------------------------------------------------ users
    def day_block(self, block: int, svc: Service, client: Any) -> None:
        """One 15-minute block of sessions, sent by a few users at once (the service micro-batches them)."""
        n = int(self.rng.poisson(self.args.per_day / CHECKS_PER_DAY))
        sessions: list[list[int]] = []
        while sum(map(len, sessions)) < n:
            size = min(int(self.rng.geometric(1 / self.args.session_mean)), n - sum(map(len, sessions)))
            sessions.append([int(x) for x in self.rng.choice(self.pool, size)])
        plans = [(f"s-{self.k}-{block}-{j}", rows, self.rng.random(len(rows)), self.rng.random(len(rows)),
                  self.rng.integers(50, size=len(rows))) for j, rows in enumerate(sessions)]
        with ThreadPoolExecutor(self.args.users) as pool:
            for out in pool.map(lambda p: self.session(svc, client, block, *p), plans):
                self.decisions.extend(out)

    def session(self, svc: Service, client: Any, block: int, sid: str, rows: list[int], u_fb: np.ndarray,
                u_noise: np.ndarray, users: np.ndarray) -> list[dict[str, Any]]:
        a, out = self.args, []
        for i, r, fb, nz, user in zip(rows, range(len(rows)), u_fb, u_noise, users):
            resp = client.post(f"{svc.url}/route", json={"prompt": self.world.prompts[i], "session_id": sid,
                                                         "willingness_to_pay": a.wtp})
            resp.raise_for_status()
            dec = resp.json()
            j = self.world.col(dec["model"])
            q, cost = float(self.world.quality[i, j]), float(self.world.cost[i, j])
            rec = {"block": block, "arm": dec["arm"], "model": dec["model"], "quality": q, "cost_usd": cost,
                   "utility": float(utility(np.array(q), np.array(cost), a.wtp)), "rated": False}
            if fb < a.feedback_share:
                rating = float(q >= 0.5) if nz >= a.noise else 1.0 - float(q >= 0.5)
                f = client.post(f"{svc.url}/feedback", json={"request_id": dec["request_id"], "rating": rating,
                                                             "cost_usd": cost, "source": f"user-{int(user)}"})
                if f.status_code >= 300:
                    raise RuntimeError(f"/feedback answered {f.status_code}: {f.text[:300]}")
                rec["rated"] = True
            out.append(rec)
        return out

    # ------------------------------------------------------------------ the canary flow
    def check(self, block: int, t_start: datetime) -> dict[str, Any]:
        """The real flow at simulated time registration + 15 min x block (no delivery: the service follows the
        champion alias by itself)."""
        from mixllm_flows.canary import canary

        t0 = time.perf_counter()
        out = canary(now=t_start + block * CHECK, deliver_promoted=False, **self.args.canary)
        m = out["metrics"]
        rec = {"block": block, "hour": block * CHECK.total_seconds() / 3600, "verdict": out["verdict"],
               "cleared": bool(out["cleared"]), "served": int(m["canary/served"]),
               "labels": [int(m["canary/champion_n"]), int(m["canary/challenger_n"])],
               "difference": m["canary/difference"], "likelihood_ratio": m["canary/likelihood_ratio"],
               "budget": m["canary/budget"], "reason": out["reason"], "seconds": round(time.perf_counter() - t0, 2)}
        self.checks.append(rec)
        if block % 8 == 0 or out["verdict"] != "extend" or (rec["cleared"] and len(self.checks) > 1
                                                             and not self.checks[-2]["cleared"]):
            print(f"[{self.challenger} {self.k}] {rec['hour']:5.2f} h: {out['verdict']} served {rec['served']} "
                  f"labels {rec['labels']} ({out['reason'][:140]}) [{rec['seconds']}s]", flush=True)
        return rec

    def summary(self, verdict: dict[str, Any], v1: str, v2: str, seconds: float) -> dict[str, Any]:
        d = self.decisions
        arm = np.array([x["arm"] for x in d])
        u = np.array([x["utility"] for x in d])
        served = int((arm == "challenger").sum())
        return {"challenger": self.challenger, "run": self.k, "champion_version": v1, "challenger_version": v2,
                **verdict, "requests": len(d), "challenger_requests": served,
                "challenger_share_of_day": served / self.args.per_day,
                "challenger_labels": int(sum(x["rated"] for x in d if x["arm"] == "challenger")),
                "true_utility": {a: float(u[arm == a].mean()) if (arm == a).any() else None
                                 for a in ("champion", "challenger")},
                "cleared_hour": next((c["hour"] for c in self.checks if c["cleared"]), None),
                "check_seconds_median": float(np.median([c["seconds"] for c in self.checks])) if self.checks else None,
                "seconds": round(seconds, 1), "checks": self.checks}


# ------------------------------------------------------------------------------------------- the report ------
def bar(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar on the finished runs (a run stopped before its verdict or its day is left out)."""
    runs = [r for r in runs if not r.get("partial")]
    worse = [r for r in runs if r["challenger"] == "worse"]
    rolled = [r["verdict"] == "rollback" and r["challenger_share_of_day"] < 0.02 for r in worse]
    out: dict[str, Any] = {}
    if worse:
        out["worse_rolled_back_before_2pct"] = {"pass": all(rolled), "count": f"{sum(rolled)}/{len(worse)}",
                                                "shares": [round(r["challenger_share_of_day"], 4) for r in worse]}
    for kind in ("better", "better_weak"):
        better = [r for r in runs if r["challenger"] == kind]
        promoted = [r["verdict"] == "promote" and r["hour"] is not None and r["hour"] <= 24 for r in better]
        if better:
            out[f"{kind}_promoted_within_1_day"] = {"pass": all(promoted), "count": f"{sum(promoted)}/{len(better)}",
                                                    "hours": [r["hour"] for r in better]}
    return out


def markdown(result: dict[str, Any]) -> str:
    a, t = result["config"], result["truth"]
    lines = [f"### Closed loop (`bench/loop_canary.py`)", "",
             f"Run {result['finished']} on {result['machine']} by `{result['command']}` ({result['seconds']:.0f} s). "
             f"World: RouterBench train, {a['pool']} queries held out as the traffic pool; champion trained on "
             f"{a['seed_queries']} queries, worse challenger on {a['seed_queries']} with quality flipped, better: the "
             f"full-information router (all {a['pool'] + a['train']} queries, the pool included), more_data on the "
             f"{a['train']} non-pool queries, weak champion (for better_weak) on the {a['seed_queries']} with "
             f"{a.get('weak_corrupt', 0.5):.0%} of them flipped. **{a['per_day']} requests/day** (2% of the day: "
             f"{0.02 * a['per_day']:.0f} requests) in sessions (mean {a['session_mean']}"
             f" requests), canary share {a['share']:.0%} of sessions ({a['cleared_share']:.0%} once cleared), "
             f"{a['feedback_share']:.0%} thumbs with {a['noise']:.0%} noise via /feedback, wtp {a['wtp']}; the "
             f"canary flow every simulated 15 min, default CanaryConfig. True utility of each router on the pool "
             f"(greedy): " + ", ".join(f"{k} {v['utility']:.4f}" for k, v in t.items()) + ".", "",
             "| challenger | run | verdict | hour | challenger requests (share of the day) | its labels | cleared at "
             "(h) | true utility champion / challenger | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        tu = r["true_utility"]
        hour = r["hour"] if r["hour"] is not None else (r["checks"][-1]["hour"] if r["checks"] else "-")
        verdict = "undecided, run stopped" if r.get("partial") else r["verdict"]
        lines.append(f"| {r['challenger']} | {r['run']} | {verdict} | {hour}"
                     f" | {r['challenger_requests']} ({r['challenger_share_of_day']:.2%}) | {r['challenger_labels']} | "
                     f"{r['cleared_hour'] if r['cleared_hour'] is not None else '-'} | "
                     f"{_f(tu['champion'])} / {_f(tu['challenger'])} | {r['seconds']:.0f} |")
    lines += ["", "Rows are every run of the invocation(s), in order; better_weak's champion is the weak router."]
    lines.append("")
    for k, b in result["bars"].items():
        lines.append(f"- {k}: **{'PASS' if b['pass'] else 'FAIL'}** ({b['count']}; "
                     f"{'shares ' + str(b['shares']) if 'shares' in b else 'hours ' + str(b['hours'])})")
    lines += [f"- {note}" for note in result.get("notes", [])]  # earlier runs' figures, added with --note
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def write_benchmarks(text: str) -> None:
    """Replace the closed-loop part (its own markers, right after the canary rule's section)."""
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text(encoding="utf-8")
    block = f"{START}\n{text}\n{END}"
    if START in doc:
        doc = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.replace("<!-- canary:end -->", "<!-- canary:end -->\n\n" + block, 1)
    path.write_text(doc, encoding="utf-8")


# ------------------------------------------------------------------------------------------------ main -------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--challengers", default="worse,better")
    ap.add_argument("--runs", type=int, default=3, help="Canaries per challenger (different users and sessions).")
    ap.add_argument("--first-run", type=int, default=0, help="Number of the first run (its users' and sessions' "
                    "seed): more runs later without repeating the earlier ones.")
    ap.add_argument("--per-day", type=int, default=10_000, help="Requests a simulated day (the bar's day size).")
    ap.add_argument("--max-hours", type=float, default=24.0, help="Simulated hours per run (at most one day).")
    ap.add_argument("--pool", type=int, default=600, help="World queries held out as the traffic pool.")
    ap.add_argument("--seed-queries", type=int, default=110, help="The champion's (and the worse one's) slice.")
    ap.add_argument("--weak-corrupt", type=float, default=0.5, help="Share of the weak champion's seed queries "
                    "whose labels are flipped (better_weak).")
    ap.add_argument("--share", type=float, default=0.05, help="Canary share of sessions (MIXLLM_CANARY_SHARE).")
    ap.add_argument("--cleared-share", type=float, default=0.2, help="MIXLLM_CANARY_CLEARED_SHARE.")
    ap.add_argument("--session-mean", type=float, default=3.0)
    ap.add_argument("--feedback-share", type=float, default=0.3)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--wtp", type=float, default=0.05)
    ap.add_argument("--users", type=int, default=4, help="Sessions sent at once.")
    ap.add_argument("--canary", type=json.loads, default={}, help="Canary flow parameters (JSON), e.g. "
                    "'{\"min_labels\": 20}'.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="The worse challenger once: 1,000 requests/day, a 20%% "
                    "canary share, 6 simulated hours, a 300-query pool: minutes, for the test.")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--write", action="store_true", help="Replace the closed-loop part of BENCHMARKS.md.")
    ap.add_argument("--note", action="append", default=[], help="A line to add under the figures (repeatable).")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.per_day, args.max_hours, args.pool = 1, min(args.per_day, 1000), min(args.max_hours, 6), 300
        args.challengers, args.share = "worse", max(args.share, 0.2)
    if not 0 < args.max_hours <= 24:
        ap.error("--max-hours must be in (0, 24]: the simulated clock holds one day (see the docstring)")
    args.checks = int(round(args.max_hours * 60 / 15))
    args.work = (args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "mixllm-loop-canary").resolve()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    from mixllm.telemetry import go_offline

    go_offline()
    os.environ["PREFECT_HOME"] = str(args.work / "prefect")  # before Prefect is imported
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    t0 = time.perf_counter()
    world = World.load("train", None, args.seed)
    order = np.random.default_rng(args.seed).permutation(world.n)
    pool, train = np.sort(order[:args.pool]), np.sort(order[args.pool:])
    args.work.mkdir(parents=True, exist_ok=True)
    challengers = args.challengers.split(",")
    if set(challengers) - set(CHALLENGERS):
        raise SystemExit(f"--challengers: choose among {CHALLENGERS}")
    dirs = train_routers(args, world, pool, train, sorted({"champion", *map(champion_of, challengers), *(
        "better" if c == "better_weak" else c for c in challengers)}))
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "command": "python bench/loop_canary.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: getattr(args, k) for k in ("per_day", "max_hours", "share", "cleared_share", "session_mean",
                                                 "feedback_share", "noise", "wtp", "seed_queries", "seed", "canary", "weak_corrupt",
                                                 "users", "runs")} | {"pool": len(pool), "train": len(train)},
        "truth": truth(world, dirs, pool, args.wtp), "runs": [], "notes": args.note}
    print("true utility on the pool:", {k: round(v["utility"], 4) for k, v in result["truth"].items()}, flush=True)
    for k in range(args.first_run, args.first_run + args.runs):
        for name in challengers:
            run = Run(args, world, pool, dirs, name, k).run(
                lambda partial: save(args, {**result, "runs": [*result["runs"], partial]}, t0))
            result["runs"].append(run)
            print(f"[{name} {k}] {run['verdict']} at {run['hour']} h; challenger served {run['challenger_requests']}"
                  f" ({run['challenger_share_of_day']:.2%} of the day), {run['challenger_labels']} labels; "
                  f"{run['seconds']:.0f}s", flush=True)
            save(args, result, t0)
    return save(args, result, t0)


def save(args: argparse.Namespace, result: dict[str, Any], t0: float) -> dict[str, Any]:
    result.update(bars=bar(result["runs"]), seconds=round(time.perf_counter() - t0, 1),
                  finished=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop_canary.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    if args.write:
        write_benchmarks(markdown(result))
    return result


if __name__ == "__main__":
    main()
