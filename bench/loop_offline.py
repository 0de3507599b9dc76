"""Offline check of bench/loop.py (figures in the README learning-loop section, measured 2026-12-02): the seed router vs seed + 1,400 decisions its softmax policy (temperature 0.02, max share 0.1) logged, rated on 30% with 10% noise, under several label treatments; usage: python bench/loop_offline.py 1400."""
import sys, time, numpy as np, pandas as pd
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from loop_world import World, choices_in, scored, utility
from mixllm.router import MixLLMRouter, RouterConfig
from mixllm import policy

WTP = 0.05
cfg = dict(epochs=0, progress=False, cache_dir=__import__("os").environ.get("MIXLLM_LOOP_CACHE", "/tmp/mixllm-loop-offline-emb"))
world = World.load("train", None, 0); test = World.load("test", None, 0)
rng = np.random.default_rng(0); order = rng.permutation(world.n)
n_seed = int(round(0.05 * world.n)); seed_rows, stream = np.sort(order[:n_seed]), order[n_seed:n_seed + int(sys.argv[1])]
seed_log = world.rows_log(seed_rows, world.models, world.quality)
t=time.time(); seed = MixLLMRouter(RouterConfig(**cfg)).fit(seed_log); print("fit", time.time()-t, flush=True)
def evaluate(r, name):
    p = r.predict(test.prompts); cols = choices_in(test, r, p, np.arange(test.n), WTP, r.models)
    s = scored(test, test.quality, np.arange(test.n), cols, WTP); print(f"{name:40s} test utility {s['utility']:.4f} q {s['relative_quality']:.3f} c {s['relative_cost']:.3f}", flush=True); return s['utility']
evaluate(seed, "seed")
full = MixLLMRouter(RouterConfig(**cfg)).fit(world.rows_log(np.concatenate([seed_rows, stream]), world.models, world.quality)); evaluate(full, "seed+stream full-info")
# bandit log from the seed policy
pred = seed.predict([world.prompts[i] for i in stream])
sc = seed.scores(pred, WTP, greedy=True)
probs = policy.probabilities(sc, policy.ExplorationConfig(mode="softmax", temperature=0.02, max_share=0.1))
cum = probs.cumsum(1); ch = (cum > rng.random(len(stream))[:, None]).argmax(1)
prop = probs[np.arange(len(stream)), ch]
print("min/median propensity", prop.min(), np.median(prop))
base = world.log.set_index(["query_id", "model"])
rows = []
for k, i in enumerate(stream):
    m = seed.models[ch[k]]; j = world.col(m); q = world.quality[i, j]
    r = base.loc[(world.query_ids[i], m)]
    if isinstance(r, pd.DataFrame): r = r.iloc[0]
    rated = rng.random() < 0.3; lab = float(q >= 0.5); 
    if rng.random() < 0.1: lab = 1 - lab
    rows.append(dict(query_id=world.query_ids[i], prompt=world.prompts[i], model=m, true=q, label=lab if rated else np.nan,
                     cost_usd=world.cost[i, j], prompt_tokens=r["prompt_tokens"], completion_tokens=np.nan, latency_ms=np.nan,
                     task=None, ts=None, router_version="v1", propensity=prop[k], true_task=r["task"]))
b = pd.DataFrame(rows); print("rated", b.label.notna().sum())
def variant(name, quality, task, propensity=True, drop_unrated=False):
    d = b.copy(); d["quality"] = quality; d["task"] = task
    if not propensity: d["propensity"] = np.nan
    if drop_unrated: d = d[d.quality.notna()]
    log = pd.concat([seed_log, d[seed_log.columns]], ignore_index=True)
    evaluate(MixLLMRouter(RouterConfig(**cfg)).fit(log), name)
variant("bandit noisy, no task (as bench)", b.label, None)
variant("bandit noisy, true task", b.label, b.true_task)
variant("bandit clean, true task", np.where(b.label.notna(), b.true, np.nan), b.true_task)
variant("bandit debiased noisy, true task", (b.label - 0.1) / 0.8, b.true_task)
variant("bandit noisy, true task, no ips", b.label, b.true_task, propensity=False)
variant("bandit noisy, no task, rated only", b.label, None, drop_unrated=True)
