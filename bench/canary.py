"""How fast the canary decides and how much traffic a challenger serves until then, on generated feedback (issue 15
bars: a worse challenger rolled back before it has served 2% of the day's traffic; a better one promoted within one
day).

A day of 10,000 requests (Poisson per 15-minute check, 96 checks a day, as the `canary` deployment runs), a canary
share of sessions on the challenger, a fraction of decisions labelled with a thumb (quality 0/1 at each arm's rate,
a small cost term), `mixllm.canary.decide` after every check with the default `CanaryConfig` (or the options below),
carrying the challenger's requests served and its cleared state from check to check as the flow does through the
registry's tags; once cleared, the challenger takes `--cleared-share` of sessions (the service's
`canary_cleared_share`). Prints, per scenario, the verdicts of `--runs` canaries, the median and worst hours to a verdict
and the share of a day's traffic the challenger served until then. Not the closed-loop simulation of the
learning-loop issue (real routers, simulated users): the arms' quality rates are given here, so it isolates the
decision rule itself. `--no-budget` is the rule without the exposure budget (the mSPRT alone), for comparison;
`--write` replaces the canary section of BENCHMARKS.md.

Usage: python bench/canary.py [--share 0.05] [--cleared-share 0.2] [--per-day 10000] [--runs 20] [--no-budget]
       [--write]
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mixllm.canary import CanaryConfig, decide  # noqa: E402
from mixllm.serving.settings import ServingSettings  # noqa: E402

CLEARED_SHARE = ServingSettings.model_fields["canary_cleared_share"].default

CHECKS_PER_DAY = 96
SCENARIOS = ((0.75, 0.60), (0.75, 0.70), (0.75, 0.75), (0.75, 0.80), (0.75, 0.85))
LABEL_RATES = (0.3, 0.1)


def canary(cfg: CanaryConfig, q_champion: float, q_challenger: float, share: float, label_rate: float,
           per_day: int, days: int, seed: int, cleared_share: float | None = None) -> tuple[str, float, float]:
    """(verdict, hours to it, challenger's requests / one day's requests) of one simulated canary."""
    rng = np.random.default_rng(seed)
    a: list[float] = []
    b: list[float] = []
    served, cleared = 0, False
    for k in range(CHECKS_PER_DAY * days):
        n = rng.poisson(per_day / CHECKS_PER_DAY)
        nb = rng.binomial(n, cleared_share if cleared and cleared_share else share)
        served += nb
        a.extend((rng.random(rng.binomial(n - nb, label_rate)) < q_champion).astype(float) - 0.01)
        b.extend((rng.random(rng.binomial(nb, label_rate)) < q_challenger).astype(float) - 0.01)
        hours = (k + 1) * 24 / CHECKS_PER_DAY
        d = decide(np.array(a), np.array(b), cfg, hours, served=served, day_requests=per_day, cleared=cleared)
        cleared = d.cleared
        if d.verdict in ("promote", "rollback", "expire"):
            return d.verdict, hours, served / per_day
    return "extend", days * 24.0, served / per_day


def table(cfg: CanaryConfig, share: float, cleared_share: float | None, per_day: int, runs: int) -> list[str]:
    """One markdown row per (label rate, arms' qualities)."""
    rows = ["| labelled | champion / challenger quality | verdicts | promoted within 24 h | rolled back before 2% of "
            "a day | hours to verdict, median (max) | challenger served, median (max) of a day's traffic |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for label_rate in LABEL_RATES:
        for qa, qb in SCENARIOS:
            res = [canary(cfg, qa, qb, share, label_rate, per_day, 3, s, cleared_share) for s in range(runs)]
            verdicts = [r[0] for r in res]
            counts = ", ".join(f"{v} {verdicts.count(v)}" for v in sorted(set(verdicts)))
            hours, served = [r[1] for r in res], [r[2] for r in res]
            fast = sum(r[0] == "promote" and r[1] <= 24 for r in res)
            early = sum(r[0] == "rollback" and r[2] < 0.02 for r in res)
            rows.append(f"| {label_rate:.0%} | {qa} / {qb} | {counts} | {fast}/{runs} | {early}/{runs} | "
                        f"{np.median(hours):.1f} ({max(hours):.1f}) | "
                        f"{np.median(served):.2%} ({max(served):.2%}) |")
            print(rows[-1], flush=True)
    return rows


def write_section(text: str) -> None:
    """Replace (or append) the canary section of BENCHMARKS.md, between its markers."""
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text(encoding="utf-8")
    block = f"## Canary decision rule (`bench/canary.py`)\n<!-- canary:start -->\n{text}\n<!-- canary:end -->\n"
    pattern = re.compile(r"## Canary decision rule.*?<!-- canary:end -->\n", re.S)
    doc = pattern.sub(lambda _: block, doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--per-day", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cleared-share", type=float, default=CLEARED_SHARE, help="share once cleared at the "
                    "budget (the service's canary_cleared_share; 0: stay at --share)")
    ap.add_argument("--no-budget", action="store_true", help="the mSPRT alone (exposure_budget None, no ramp)")
    ap.add_argument("--write", action="store_true", help="replace the canary section of BENCHMARKS.md")
    args = ap.parse_args()
    cfg = CanaryConfig(exposure_budget=None) if args.no_budget else CanaryConfig()
    t0 = time.time()
    ramp = None if args.no_budget or not args.cleared_share else args.cleared_share
    head = (f"config {cfg.model_dump()}; share {args.share:.0%} of sessions"
            f"{f', {ramp:.0%} once cleared at the budget' if ramp else ''}, {args.per_day} requests/day, checked "
            f"every 15 min for up to 3 days, {args.runs} canaries per row")
    print(head, flush=True)
    rows = table(cfg, args.share, ramp, args.per_day, args.runs)
    if args.write:  # with the mSPRT alone beside it, on the same seeds
        print("the mSPRT alone (no exposure budget, no ramp):", flush=True)
        alone = table(CanaryConfig(exposure_budget=None, alpha=0.05), args.share, None, args.per_day, args.runs)
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        argv = " ".join(sys.argv[1:])
        write_section(f"Run {when} on {platform.machine()} by `bench/canary.py {argv}` ({time.time() - t0:.0f} s). "
                      f"{head}.\n\n" + "\n".join(rows) + "\n\nThe mSPRT alone on the same seeds (no exposure "
                      "budget, no ramp, alpha 0.05: the rule before 2026-12-03 #3):\n\n" + "\n".join(alone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
