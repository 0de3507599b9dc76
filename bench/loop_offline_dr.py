"""Offline check of the learning loop's label treatment and exploration (bench/loop.py's world, no service).

The seed router (5% of the train queries, full information) logs `--decisions` decisions of the stream under an
exploration setting (users rate 30% with 10% noise; debiased labels as the nightly's RatingMapping(noise) gives);
candidates trained from seed + those logged decisions under several label treatments are scored, paired against
the seed on the same queries, on a validation part of the TRAIN split (queries neither in the seed nor in the
stream: settings are chosen there, never on the test split) and, for the record, on the test split.

Treatments: `ips` (logged rows join the memory, weight 1 / max(propensity, clip): the old rule), `residual`
(PredictorConfig(bandit_labels="residual"): the full-information rows alone train each LLM's model; logged rows
only correct it by a shrunk per-tag mean residual), `oracle` (the residual with every stream query's true quality
of every model: the most a per-tag correction can give) and `full` (seed + stream with full information).
Usage: python bench/loop_offline_dr.py [--decisions 1400] [--explore JSON ...] [--seeds 0 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_world import World, choices_in, utility  # noqa: E402

from mixllm import policy  # noqa: E402
from mixllm.router import MixLLMRouter, RouterConfig  # noqa: E402

WTP, NOISE, SHARE = 0.05, 0.1, 0.3
CACHE = os.environ.get("MIXLLM_LOOP_CACHE", "/tmp/mixllm-loop-offline-emb")


def router(log: pd.DataFrame, **predictor) -> MixLLMRouter:
    cfg = {"epochs": 0, "progress": False, "cache_dir": CACHE}
    if predictor:
        cfg["predictor"] = predictor
    return MixLLMRouter(RouterConfig(**cfg)).fit(log)


def per_query(w: World, r: MixLLMRouter, pred=None) -> np.ndarray:
    """Utility of the router's greedy choice on each query of world w."""
    pred = r.predict(w.prompts) if pred is None else pred
    cols = choices_in(w, r, pred, np.arange(w.n), WTP, r.models)
    return utility(w.quality[np.arange(w.n), cols], w.cost[np.arange(w.n), cols], WTP)


def paired(u: np.ndarray, base: np.ndarray, rng: np.random.Generator) -> str:
    d = u - base
    boot = d[rng.integers(0, len(d), (2000, len(d)))].mean(1)
    return f"{u.mean():.4f} ({d.mean():+.4f} [{np.quantile(boot, .05):+.4f}, {np.quantile(boot, .95):+.4f}])"


def logged(world: World, seed: MixLLMRouter, stream: np.ndarray, explore: dict, rng: np.random.Generator):
    """The seed policy's decisions on the stream, rated by simulated users (label = debiased thumbs)."""
    pred = seed.predict([world.prompts[i] for i in stream])
    probs = policy.probabilities(seed.scores(pred, WTP, greedy=True), policy.ExplorationConfig(**explore))
    ch = (probs.cumsum(1) > rng.random(len(stream))[:, None]).argmax(1)
    prop = probs[np.arange(len(stream)), ch]
    base = world.log.drop_duplicates(["query_id", "model"]).set_index(["query_id", "model"])
    rows = []
    for k, i in enumerate(stream):
        m = seed.models[ch[k]]
        j = world.col(m)
        r = base.loc[(world.query_ids[i], m)]
        label = np.nan
        if rng.random() < SHARE:
            thumb = float(world.quality[i, j] >= 0.5)
            thumb = 1 - thumb if rng.random() < NOISE else thumb
            label = (thumb - NOISE) / (1 - 2 * NOISE)
        rows.append(dict(query_id=world.query_ids[i], prompt=world.prompts[i], model=m, quality=label,
                         cost_usd=world.cost[i, j] if not np.isnan(label) else np.nan,
                         prompt_tokens=r["prompt_tokens"], completion_tokens=np.nan, latency_ms=np.nan, task=None,
                         ts=None, router_version="v1", propensity=prop[k]))
    b = pd.DataFrame(rows)
    return b, float(np.mean(ch != probs.argmax(1))), b.model.value_counts().to_dict()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=1400)
    ap.add_argument("--explore", nargs="+", default=['{"mode": "softmax", "temperature": 0.02, "max_share": 0.1}'])
    ap.add_argument("--treatments", nargs="+", default=["ips", "residual", "oracle", "full"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--smoothing", type=float, default=None, help="residual_smoothing (default: the config's)")
    args = ap.parse_args()
    world, test = World.load("train", None, 0), World.load("test", None, 0)
    for s in args.seeds:
        rng = np.random.default_rng(s)
        order = rng.permutation(world.n)
        n_seed = int(round(0.05 * world.n))
        seed_rows, stream = np.sort(order[:n_seed]), order[n_seed:n_seed + args.decisions]
        val = world.subset(np.sort(order[n_seed + args.decisions:]))
        seed_log = world.rows_log(seed_rows, world.models, world.quality)
        seed = router(seed_log)
        base = {"val": per_query(val, seed), "test": per_query(test, seed)}
        print(f"split seed {s}: seed router val {base['val'].mean():.4f} (n {val.n}) test {base['test'].mean():.4f}"
              f" (n {test.n})", flush=True)
        extra = {} if args.smoothing is None else {"residual_smoothing": args.smoothing}
        if "full" in args.treatments:
            full = router(world.rows_log(np.concatenate([seed_rows, stream]), world.models, world.quality))
            print(f"  full info seed+stream: val {paired(per_query(val, full), base['val'], rng)} test "
                  f"{paired(per_query(test, full), base['test'], rng)}", flush=True)
        if "oracle" in args.treatments:  # every model rated on every stream query, clean, as logged rows
            o = world.rows_log(stream, world.models, world.quality).assign(propensity=1.0, router_version="v1")
            cand = router(pd.concat([seed_log, o[seed_log.columns]], ignore_index=True), bandit_labels="residual",
                          **extra)
            print(f"  oracle residual: val {paired(per_query(val, cand), base['val'], rng)} test "
                  f"{paired(per_query(test, cand), base['test'], rng)}", flush=True)
        for e in args.explore:
            b, explored, counts = logged(world, seed, stream, json.loads(e), rng)
            print(f"  explore {e}: explored {explored:.1%}, rated {b.quality.notna().sum()}, picks {counts}",
                  flush=True)
            log = pd.concat([seed_log, b[seed_log.columns]], ignore_index=True)
            for t in [t for t in args.treatments if t in ("ips", "residual", "relative")]:
                cand = router(log, bandit_labels=t, **(extra if t in ("residual", "relative") else {}))
                print(f"    {t:9s}: val {paired(per_query(val, cand), base['val'], rng)} test "
                      f"{paired(per_query(test, cand), base['test'], rng)}", flush=True)


if __name__ == "__main__":
    main()
