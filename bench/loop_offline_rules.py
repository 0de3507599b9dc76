"""Which shrinkage of the bandit-log corrections should the nightly use? Repeated draws on train, not one.

bench/loop_offline_curve.py measured one draw of the log per volume, and its draw-to-draw spread was as large as the
effects. Here each draw re-splits the TRAIN split (its own seed of 5% full-information queries, its own 600
validation queries, its own pool), re-fits the seed router and the full-information router on seed + pool (the gap's
top), and logs N labelled decisions of the seed's policy (softmax 0.02, max share 0.1: bench/loop.py's exploration;
30% rated, 10% noise, debiased) on the pool (resampled beyond it: a production stream repeats its kinds of queries).
For each shrinkage rule, a candidate trained on seed + log is scored against the seed on the draw's validation
queries: the share of the seed -> full gap it closes. A rule is chosen on these validation figures (mean over draws
and its spread); the test split is scored for the record only.

Rules: `s<k>` = PredictorConfig(residual_smoothing=k) (pseudo-rows; 200 is the default), `eb` =
residual_shrinkage="empirical_bayes" (each correction shrunk by its own standard error), `relative` =
bandit_labels="relative" (each model's residual minus the mean residual of similar logged queries, any model).
Usage: python bench/loop_offline_rules.py [--labels 420 1470 4200] [--draws 4] [--rules s200 s50 s20 eb]
    [--fixed-split] (the bench's own seed split every draw: only the log is redrawn)
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
from loop_offline_curve import N_VAL, SERVED  # noqa: E402
from loop_offline_dr import CACHE, SHARE, logged, per_query, router  # noqa: E402
from loop_world import World  # noqa: E402


def memoise_embeddings() -> None:
    """Every router here shares the un-tuned encoder (epochs 0): embed each prompt once per process (an in-memory
    layer over the on-disk cache), since `predict` alone would re-encode the validation and test queries for every
    candidate."""
    from mixllm.embedding_cache import EmbeddingCache
    from mixllm.router import MixLLMRouter

    disk, memory, embed = EmbeddingCache(Path(CACHE) / "cache.sqlite"), {}, MixLLMRouter.embed

    def cached(self, prompts, cache=None, progress=False):  # noqa: ANN001, ANN202 - MixLLMRouter.embed's signature
        prompts = list(prompts)
        if self.adapter is not None:
            return embed(self, prompts, cache or disk, progress)
        missing = list(dict.fromkeys(p for p in prompts if p not in memory))
        if missing:
            memory.update(zip(missing, embed(self, missing, cache or disk, progress)))
        return np.stack([memory[p] for p in prompts]) if prompts else np.zeros((0, 384), np.float32)

    MixLLMRouter.embed = cached


def rule_config(rule: str) -> dict:
    if rule == "relative":  # corrections relative to the models logged on similar queries (PredictorBank.relate)
        return {"bandit_labels": "relative"}
    if rule == "eb":
        return {"bandit_labels": "residual", "residual_shrinkage": "empirical_bayes"}
    if rule.startswith("s"):
        return {"bandit_labels": "residual", "residual_smoothing": float(rule[1:])}
    raise SystemExit(f"unknown rule {rule!r}: s<pseudo-rows> or eb")


def interval(diff: list[float], gap: list[float]) -> dict:
    """Gap closed over draws: mean(utility - seed) / mean(gap) (a ratio of means: one draw's gap can be tiny), with
    a t 90% interval of the mean difference over the draws (independent re-splits of train) on the same scale, and
    each draw's own share."""
    a, g = np.asarray(diff, float), float(np.mean(gap))
    t90 = {2: 6.314, 3: 2.920, 4: 2.353, 5: 2.132, 6: 2.015, 7: 1.943, 8: 1.895}.get(len(a), 1.8)
    half = float(t90 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    shares = a / np.asarray(gap, float)
    return {"closed": float(a.mean() / g), "ci90": [float((a.mean() - half) / g), float((a.mean() + half) / g)],
            "mean_diff": float(a.mean()), "mean_gap": g, "min": float(shares.min()), "max": float(shares.max()),
            "draws": [float(v) for v in shares]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", nargs="+", type=int, default=[420, 1470, 4200])
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--rules", nargs="+", default=["s200", "s50", "s20", "eb"])
    ap.add_argument("--fixed-split", action="store_true", help="Every draw on split 0 of bench/loop.py and "
                    "bench/loop_offline_curve.py (rng 0: the closed-loop bench's own 110 seed queries): only the "
                    "logged decisions and ratings are redrawn.")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "loop_rules.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    memoise_embeddings()
    world, test = World.load("train", None, 0), World.load("test", None, 0)
    out = {"labels": args.labels, "rules": args.rules, "draws": [], "summary": {}}
    fixed = None
    for d in range(args.draws):
        rng = np.random.default_rng(1000 + d)
        order = np.random.default_rng(0).permutation(world.n) if args.fixed_split else rng.permutation(world.n)
        n_seed = int(round(0.05 * world.n))
        seed_rows, val_rows, pool = np.sort(order[:n_seed]), np.sort(order[n_seed:n_seed + N_VAL]), order[n_seed + N_VAL:]
        val = world.subset(val_rows)
        seed_log = world.rows_log(seed_rows, world.models, world.quality)
        if fixed is None or not args.fixed_split:
            seed = router(seed_log)
            base = {"val": per_query(val, seed), "test": per_query(test, seed)}
            full = router(world.rows_log(np.concatenate([seed_rows, pool]), world.models, world.quality))
            gap = {k: float(per_query(w, full).mean() - base[k].mean()) for k, w in (("val", val), ("test", test))}
            fixed = (seed, base, gap)
        seed, base, gap = fixed
        draw = {"draw": d, "seed_utility": {k: float(v.mean()) for k, v in base.items()}, "gap": gap, "rows": []}
        print(f"draw {d}: seed val {base['val'].mean():.4f} gap val {gap['val']:+.4f} test {gap['test']:+.4f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
        for n in args.labels:
            decisions = int(np.ceil(n / SHARE * 1.15))
            stream = pool[rng.integers(0, len(pool), decisions)] if decisions > len(pool) else pool[:decisions]
            b, explored, _ = logged(world, seed, stream, SERVED, np.random.default_rng(10_000 * d + n))
            b = b[b["quality"].notna()].head(n)
            log = pd.concat([seed_log, b[seed_log.columns]], ignore_index=True)
            for rule in args.rules:
                cand = router(log, **rule_config(rule))
                row = {"labels": n, "rule": rule, "explored": explored}
                for split, w in (("val", val), ("test", test)):
                    diff = float((per_query(w, cand) - base[split]).mean())
                    row[split] = {"diff": diff, "gap_closed": diff / gap[split]}
                draw["rows"].append(row)
                print(f"  N {n:5d} {rule:5s}: val {row['val']['diff']:+.4f} closes {row['val']['gap_closed']:+.0%}"
                      f"; test closes {row['test']['gap_closed']:+.0%} ({time.perf_counter() - t0:.0f}s)", flush=True)
        out["draws"].append(draw)
        for n in args.labels:
            for rule in args.rules:
                cells = [r for dd in out["draws"] for r in dd["rows"] if r["labels"] == n and r["rule"] == rule]
                out["summary"][f"{n}/{rule}"] = {s: interval([c[s]["diff"] for c in cells],
                                                          [dd["gap"][s] for dd in out["draws"]]) for s in ("val", "test")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out | {"seconds": round(time.perf_counter() - t0, 1), "finished":
                                              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"}, indent=1))
    print("\n| N labels | rule | val gap closed: mean diff / mean gap [t 90% CI over draws] (per-draw min..max) | test (record) |")
    print("| --- | --- | --- | --- |")
    for key, s in out["summary"].items():
        n, rule = key.split("/")
        v, t = s["val"], s["test"]
        print(f"| {n} | {rule} | {v['closed']:+.0%} [{v['ci90'][0]:+.0%}, {v['ci90'][1]:+.0%}] ({v['min']:+.0%}.."
              f"{v['max']:+.0%}) | {t['closed']:+.0%} [{t['ci90'][0]:+.0%}, {t['ci90'][1]:+.0%}] |")


if __name__ == "__main__":
    main()
