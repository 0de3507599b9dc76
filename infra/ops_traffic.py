"""Traffic and users for `infra/run_ops.sh`: requests to the running service and feedback on its answers.

Why simulated users: on this machine nobody calls the LLMs the service routes to, so the quality of each answer is
drawn here, per arm (`--champion-quality`, `--challenger-quality`), as a thumbs-up rate. That is what lets the
canary reach a verdict on the real servers in minutes; every other part (routing, the outbox, the store, the shadow
worker, the Prefect runs, the registry's tags) is the real one. Prompts are the packaged sample (the tasks the
champion was trained on) or, with `--drifted`, requests about things it never saw (trip plans, recipes,
poems), which the drift monitor should notice.

    python infra/ops_traffic.py send --url http://127.0.0.1:3000 --n 240 [--drifted] [--challenger-quality 0.3]
    python infra/ops_traffic.py wait-shadow --url http://127.0.0.1:3000    # until the shadow queue is decided
    python infra/ops_traffic.py triggered --api http://127.0.0.1:4200/api [--cancel]  # drift-triggered nightlies
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "mixllm" / "defaults" / "sample"
CITIES = ["Lisbon", "Kyoto", "Oaxaca", "Tromso", "Marrakesh", "Hanoi", "Cusco", "Tbilisi", "Valparaiso", "Reykjavik"]
DISHES = ["a vegan lasagne", "sourdough bread", "pho", "a lemon tart", "mole poblano", "ramen broth", "paella"]
THEMES = ["autumn rain", "a lost cat", "the night shift", "an old lighthouse", "first snow", "a city bus"]


def sample_prompts() -> list[str]:
    """Prompts of the packaged sample, train and held-out (the champion's own tasks)."""
    csv.field_size_limit(1 << 30)
    out: list[str] = []
    for path in sorted(SAMPLE.glob("*.csv.gz")):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            out += [row["prompt"] for row in csv.DictReader(fh) if row.get("prompt")]
    return out


def drifted_prompts(n: int, rng: random.Random) -> list[str]:
    """Requests unlike any task the champion was trained on."""
    makers = [lambda: f"Plan a {rng.randint(2, 9)}-day trip to {rng.choice(CITIES)} for two on a budget of "
                      f"{rng.randint(4, 30) * 100} euros, with one museum and one market a day.",
              lambda: f"Give me a step-by-step recipe for {rng.choice(DISHES)} for {rng.randint(2, 12)} people, "
                      f"with a shopping list.",
              lambda: f"Write a short poem about {rng.choice(THEMES)} in {rng.choice(['four', 'six', 'eight'])} "
                      f"lines that rhyme."]
    return [rng.choice(makers)() for _ in range(n)]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def send(args: argparse.Namespace) -> int:
    """Route `--n` requests (one session each), then rate every answer as the simulated users of its arm would."""
    rng = random.Random(args.seed)
    pool = sample_prompts()
    prompts = drifted_prompts(args.n, rng) if args.drifted else rng.sample(pool, min(args.n, len(pool)))
    arms: Counter[str] = Counter()
    good: Counter[str] = Counter()
    for i, prompt in enumerate(prompts):
        r = post(f"{args.url}/route", {"prompt": prompt[:4000], "session_id": f"{args.tag}-{i}"})
        q = args.challenger_quality if r["arm"] == "challenger" else args.champion_quality
        quality = float(rng.random() < q)
        post(f"{args.url}/feedback", {"request_id": r["request_id"], "quality": quality, "cost_usd": args.cost_usd,
                                      "source": "ops-users"})
        arms[r["arm"]] += 1
        good[r["arm"]] += quality
    print(json.dumps({"requests": args.n, "drifted": args.drifted, "per_arm": dict(arms),
                      "thumbs_up_rate": {a: round(good[a] / arms[a], 3) for a in arms}}))
    return 0


def wait_shadow(args: argparse.Namespace) -> int:
    """Until the shadow queue is empty (`queued` counts requests still waiting), or `--timeout` seconds."""
    t0 = time.time()
    while True:
        with urllib.request.urlopen(f"{args.url}/readyz", timeout=10) as resp:
            shadow = json.loads(resp.read()).get("shadow") or {}
        if shadow.get("queued", 0) == 0 or time.time() - t0 > args.timeout:
            print(json.dumps({"shadow": shadow, "waited_s": round(time.time() - t0)}))
            return 0 if shadow.get("queued", 0) == 0 else 1
        time.sleep(3)


def triggered(args: argparse.Namespace) -> int:
    """The nightly runs the drift flow started (tag `drift-triggered`); `--cancel` cancels those not finished."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.states import Cancelled, Cancelling

    async def run() -> list[dict]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["drift-triggered"])))
            out = []
            for r in runs:
                row = {"id": str(r.id), "name": r.name, "state": r.state_name,
                       "deployment_id": str(r.deployment_id)}
                if args.cancel and r.state is not None and not r.state.is_final():
                    # a running one is stopped by its worker (Cancelling); one not started yet is simply Cancelled
                    await client.set_flow_run_state(r.id, Cancelling() if r.state.is_running() else Cancelled(),
                                                    force=True)
                    row["cancelled"] = True
                out.append(row)
            return out

    rows = asyncio.run(run())
    print(json.dumps(rows))
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--url", required=True)
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--drifted", action="store_true")
    s.add_argument("--champion-quality", type=float, default=0.8)
    s.add_argument("--challenger-quality", type=float, default=0.3)
    s.add_argument("--cost-usd", type=float, default=0.002)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tag", default="ops")
    w = sub.add_parser("wait-shadow")
    w.add_argument("--url", required=True)
    w.add_argument("--timeout", type=float, default=300)
    t = sub.add_parser("triggered")
    t.add_argument("--cancel", action="store_true")
    args = ap.parse_args(argv)
    return {"send": send, "wait-shadow": wait_shadow, "triggered": triggered}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
