"""Learning curve of the learning loop's training side, offline (bench/loop.py's world, no service, no gates).

Question: can the nightly training learn from the service's own bandit log at all, and what limits it? The seed
router (5% of the train queries, full information) logs decisions on train queries outside a fixed validation set
(resampled when more decisions are asked than there are queries: a production stream repeats its kinds of
queries); users rate 30% with 10% noise (debiased labels, as the nightly's RatingMapping(noise) gives). For each
number N of LABELLED logged decisions, candidates trained on seed + those N labels are scored, paired against the
seed on the same validation queries (train split: settings are never chosen on test; the test split is reported
for the record), beside a candidate trained on seed + N full-information rows (N / 11 queries, every LLM clean).

Treatments: `residual` (the default: PredictorConfig(bandit_labels="residual"), residual_smoothing 200),
`residual_s20` (smoothing 20), `ips` (logged rows join the memory, 1 / max(propensity, 0.05)), `uniform` (the
residual rule on a log whose choices are uniform over the LLMs: what full coverage of the (model, task) cells
gives at the same number of labels), `full_rows` (N full-information rows).
Usage: python bench/loop_offline_curve.py [--labels 420 1400 4200] [--seed 0] [--out bench/results/loop_curve.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_offline_dr import SHARE, logged, per_query, router  # noqa: E402
from loop_world import World  # noqa: E402

SERVED = {"mode": "softmax", "temperature": 0.02, "max_share": 0.1}  # bench/loop.py's exploration
UNIFORM = {"mode": "epsilon", "epsilon": 10 / 11, "top_k": 11, "max_share": 1.0}  # each of 11 LLMs 1/11
N_VAL = 600


def ci(d: np.ndarray, rng: np.random.Generator) -> list[float]:
    boot = d[rng.integers(0, len(d), (2000, len(d)))].mean(1)
    return [float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", nargs="+", type=int, default=[420, 1400, 4200])
    ap.add_argument("--treatments", nargs="+", default=["residual", "residual_s20", "ips", "uniform", "full_rows"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "loop_curve.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    world, test = World.load("train", None, 0), World.load("test", None, 0)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(world.n)
    n_seed = int(round(0.05 * world.n))
    seed_rows, val_rows, pool = np.sort(order[:n_seed]), np.sort(order[n_seed:n_seed + N_VAL]), order[n_seed + N_VAL:]
    val = world.subset(val_rows)
    seed_log = world.rows_log(seed_rows, world.models, world.quality)
    seed = router(seed_log)
    base = {"val": per_query(val, seed), "test": per_query(test, seed)}
    full_all = router(world.rows_log(np.concatenate([seed_rows, pool]), world.models, world.quality))
    ref = {"val": per_query(val, full_all), "test": per_query(test, full_all)}
    gap = {k: float(ref[k].mean() - base[k].mean()) for k in base}
    out = {"seed": args.seed, "seed_queries": int(n_seed), "val_queries": int(val.n), "pool_queries": int(len(pool)),
           "seed_utility": {k: float(v.mean()) for k, v in base.items()},
           "full_pool_utility": {k: float(v.mean()) for k, v in ref.items()}, "gap": gap, "rows": []}
    print(f"seed {out['seed_utility']} full(pool {len(pool)} queries) {out['full_pool_utility']}", flush=True)
    for n in args.labels:
        decisions = int(np.ceil(n / SHARE * 1.15))  # enough draws that >= n get rated
        stream = pool[rng.integers(0, len(pool), decisions)] if decisions > len(pool) else pool[:decisions]
        logs = {}
        for name, explore in (("served", SERVED), ("uniform", UNIFORM)):
            if name == "uniform" and "uniform" not in args.treatments:
                continue
            b, explored, counts = logged(world, seed, stream, explore, np.random.default_rng(args.seed + n))
            b = b[b["quality"].notna()].head(n)
            logs[name] = b
            print(f"N {n}: {name} log, explored {explored:.1%}, labelled {len(b)}, per model "
                  f"{b['model'].value_counts().to_dict()}", flush=True)
        for t in args.treatments:
            if t == "full_rows":
                q = pool[rng.permutation(len(pool))[: max(1, n // len(world.models))]]
                log = pd.concat([seed_log, world.rows_log(q, world.models, world.quality)], ignore_index=True)
                cand = router(log)
            else:
                b = logs["uniform" if t == "uniform" else "served"]
                log = pd.concat([seed_log, b[seed_log.columns]], ignore_index=True)
                labels = "ips" if t == "ips" else "residual"
                extra = {"residual_smoothing": 20.0} if t == "residual_s20" else {}
                cand = router(log, bandit_labels=labels, **extra)
            row = {"labels": n, "treatment": t}
            for split, w in (("val", val), ("test", test)):
                d = per_query(w, cand) - base[split]
                row[split] = {"utility": float(base[split].mean() + d.mean()), "diff": float(d.mean()),
                              "ci90": ci(d, rng), "gap_closed": float(d.mean() / gap[split])}
            out["rows"].append(row)
            print(f"  {t:13s} N {n}: val {row['val']['diff']:+.4f} {np.round(row['val']['ci90'], 4).tolist()} "
                  f"closes {row['val']['gap_closed']:.0%}; test {row['test']['diff']:+.4f} closes "
                  f"{row['test']['gap_closed']:.0%}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out | {"seconds": round(time.perf_counter() - t0, 1), "finished":
                                                  f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"}, indent=1))


if __name__ == "__main__":
    main()
