"""Offline check of bench/loop.py (README learning-loop section): per-model mean predicted vs true quality on the test split, seed router vs seed + 1,400 logged decisions with clean labels: which models the logs correct."""
import sys, numpy as np, pandas as pd
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from loop_world import World
from mixllm.router import MixLLMRouter, RouterConfig
from mixllm import policy
WTP = 0.05; cfg = dict(epochs=0, progress=False, cache_dir=__import__("os").environ.get("MIXLLM_LOOP_CACHE", "/tmp/mixllm-loop-offline-emb"))
world = World.load("train", None, 0); test = World.load("test", None, 0)
rng = np.random.default_rng(0); order = rng.permutation(world.n)
n_seed = int(round(0.05 * world.n)); seed_rows, stream = np.sort(order[:n_seed]), order[n_seed:n_seed + 1400]
seed_log = world.rows_log(seed_rows, world.models, world.quality)
seed = MixLLMRouter(RouterConfig(**cfg)).fit(seed_log)
pred = seed.predict([world.prompts[i] for i in stream]); sc = seed.scores(pred, WTP)
probs = policy.probabilities(sc, policy.ExplorationConfig(mode="softmax", temperature=0.02, max_share=0.1))
ch = (probs.cumsum(1) > rng.random(len(stream))[:, None]).argmax(1); prop = probs[np.arange(len(stream)), ch]
base = world.log.drop_duplicates(["query_id", "model"]).set_index(["query_id", "model"])
rows = []
for k, i in enumerate(stream):
    m = seed.models[ch[k]]; r = base.loc[(world.query_ids[i], m)]
    rows.append(dict(query_id=world.query_ids[i], prompt=world.prompts[i], model=m, quality=world.quality[i, world.col(m)],
                     cost_usd=world.cost[i, world.col(m)], prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
                     latency_ms=np.nan, task=r["task"], ts=None, router_version="v1", propensity=prop[k]))
b = pd.DataFrame(rows)
bandit = MixLLMRouter(RouterConfig(**cfg)).fit(pd.concat([seed_log, b[seed_log.columns]], ignore_index=True))
ps, pb = seed.predict(test.prompts), bandit.predict(test.prompts)
cs, cb = seed.choose(ps, WTP), bandit.choose(pb, WTP)
print(f"{'model':40s} rows  true  seed_pred bandit_pred  seed_share bandit_share")
for j, m in enumerate(seed.models):
    t = test.quality[:, test.col(m)].mean()
    print(f"{m:40s} {int((b.model==m).sum()):4d}  {t:.3f}  {ps.quality[:, j].mean():.3f}  {pb.quality[:, bandit.models.index(m)].mean():.3f}  {np.mean(cs==j):.2f}  {np.mean(cb==bandit.models.index(m)):.2f}", flush=True)
