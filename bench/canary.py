"""How fast the canary's sequential test decides, on generated feedback (issue 15 bars: a worse challenger rolled back
before it has served 2% of the day's traffic; a better one promoted within one day).

A day of 10,000 requests (Poisson per 15-minute check, 96 checks a day, as the `canary` deployment runs), a canary
share of sessions on the challenger, a fraction of decisions labelled with a thumb (quality 0/1 at each arm's rate,
a small cost term), `mixllm.canary.decide` after every check with the default `CanaryConfig` (or --alpha,
--rollback-alpha, --tau). Prints, per scenario, the verdicts of `--runs` canaries, the median hours to a verdict and
the share of a day's traffic the challenger served until then. Not the closed-loop simulation of the learning-loop
issue (real routers, simulated users): the arms' quality rates are given here, so it isolates the test itself.

Usage: python bench/canary.py [--share 0.05] [--per-day 10000] [--runs 20] [--rollback-alpha 0.2] [--tau 0.1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixllm.canary import CanaryConfig, decide  # noqa: E402

CHECKS_PER_DAY = 96


def canary(cfg: CanaryConfig, q_champion: float, q_challenger: float, share: float, label_rate: float,
           per_day: int, days: int, seed: int) -> tuple[str, float, float]:
    """(verdict, hours to it, challenger's requests / one day's requests) of one simulated canary."""
    rng = np.random.default_rng(seed)
    a: list[float] = []
    b: list[float] = []
    served = 0
    for k in range(CHECKS_PER_DAY * days):
        n = rng.poisson(per_day / CHECKS_PER_DAY)
        nb = rng.binomial(n, share)
        served += nb
        a.extend((rng.random(rng.binomial(n - nb, label_rate)) < q_champion).astype(float) - 0.01)
        b.extend((rng.random(rng.binomial(nb, label_rate)) < q_challenger).astype(float) - 0.01)
        hours = (k + 1) * 24 / CHECKS_PER_DAY
        d = decide(np.array(a), np.array(b), cfg, hours)
        if d.verdict in ("promote", "rollback", "expire"):
            return d.verdict, hours, served / per_day
    return "extend", days * 24.0, served / per_day


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--per-day", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--rollback-alpha", type=float, default=None)
    ap.add_argument("--tau", type=float, default=None)
    args = ap.parse_args()
    over = {k: v for k, v in (("alpha", args.alpha), ("rollback_alpha", args.rollback_alpha), ("tau", args.tau))
            if v is not None}
    cfg = CanaryConfig(**over)
    print(f"config {cfg.model_dump()}; share {args.share:.0%}, {args.per_day} requests/day, {args.runs} runs each")
    print("| labelled | champion / challenger quality | verdicts | median hours | challenger served, median (max) "
          "of a day's traffic |")
    print("| --- | --- | --- | --- | --- |")
    for label_rate in (0.3, 0.1):
        for qa, qb in ((0.75, 0.60), (0.75, 0.70), (0.75, 0.75), (0.75, 0.80), (0.75, 0.85)):
            res = [canary(cfg, qa, qb, args.share, label_rate, args.per_day, 3, s) for s in range(args.runs)]
            verdicts = [r[0] for r in res]
            counts = ", ".join(f"{v} {verdicts.count(v)}" for v in sorted(set(verdicts)))
            print(f"| {label_rate:.0%} | {qa} / {qb} | {counts} | {np.median([r[1] for r in res]):.1f} | "
                  f"{np.median([r[2] for r in res]):.2%} ({max(r[2] for r in res):.2%}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
