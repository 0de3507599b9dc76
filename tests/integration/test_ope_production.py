"""Off-policy evaluation on a real store and real routers (mixllm.ope.production_metrics): a service explores with
softmax over a small trained router's scores on held-out prompts whose every model's quality and cost is known
(RouterBench is full-information), so the greedy router's realised value is known exactly and the estimates can be
checked against it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from mixllm import policy
from mixllm.config import get_settings
from mixllm.ope import OPEConfig, production_metrics
from mixllm.schemas import FeedbackRecord, LogRecord
from mixllm.store import Store

pytestmark = pytest.mark.integration


def test_without_labelled_decisions_nothing_is_loaded_and_the_count_says_so(tmp_path: Path) -> None:
    settings = get_settings()
    store = Store(settings.store_url)
    store.append_logs([LogRecord(query_id="full", prompt="p", model="m", quality=1.0, cost_usd=0.1),  # no policy
                       LogRecord(query_id="unrated", prompt="p", model="m", router_version="1", propensity=0.5)])
    out = production_metrics(settings, tmp_path / "no-candidate", tmp_path / "no-champion")  # never opened
    assert out["ope/n_labelled"] == 0 and not any(k.startswith("ope/candidate") for k in out)
    store.append_logs([LogRecord(query_id="unrated", prompt="p", model="m", router_version="1", propensity=0.5,
                                 quality=1.0)])  # observed, but without a cost: left out of the utility, counted
    out = production_metrics(settings, tmp_path / "no-candidate", None)
    assert (out["ope/n_labelled"], out["ope/n_missing_cost"]) == (0, 1)


@pytest.mark.slow
def test_estimates_of_the_greedy_router_cover_its_realised_value(routerbench_dir: Path,
                                                                 trained_router_dir: Path) -> None:
    from mixllm.data import load_routerbench
    from mixllm.routers.registry import load_router

    settings = get_settings()
    router = load_router(trained_router_dir)
    wtp = settings.default_willingness_to_pay
    test = load_routerbench(routerbench_dir, "test")
    test = test[test["model"].isin(router.models) & test["quality"].notna() & test["cost_usd"].notna()]
    full = test.pivot_table(index="query_id", columns="model", values=["quality", "cost_usd"])
    full = full.dropna().head(150)
    quality, cost = full["quality"][list(router.models)].to_numpy(), full["cost_usd"][list(router.models)].to_numpy()
    prompts = test.drop_duplicates("query_id").set_index("query_id").loc[full.index, "prompt"].tolist()

    scores = router.scores(router.predict(prompts), wtp, greedy=True)
    explore = policy.ExplorationConfig(mode="softmax", temperature=0.05, max_share=0.5)
    chosen, propensity = policy.select(scores, explore, np.random.default_rng(0))
    assert (propensity < 1).any()
    rows = np.arange(len(prompts))
    greedy = policy.best(scores)
    realised = float((quality[rows, greedy] - cost[rows, greedy] / wtp).mean())

    store = Store(settings.store_url)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    half = len(prompts) // 2  # half observed by the service, half rated by users (thumbs = the 0/1 quality)
    store.append_logs([LogRecord(query_id=f"r{i}", prompt=p, model=router.models[chosen[i]], ts=t0,
                                 router_version="1", propensity=float(propensity[i]),
                                 quality=float(quality[i, chosen[i]]) if i < half else None,
                                 cost_usd=float(cost[i, chosen[i]])) for i, p in enumerate(prompts)])
    store.append_feedback([FeedbackRecord(query_id=f"r{i}", model=router.models[chosen[i]],
                                          rating=float(quality[i, chosen[i]]), ts=t0 + timedelta(seconds=1))
                           for i in range(half, len(prompts))])

    out = production_metrics(settings, trained_router_dir, trained_router_dir, OPEConfig(level=0.99))
    assert out["ope/n_labelled"] == len(prompts) and out["ope/n_missing_cost"] == 0
    for est in ("ips", "snips", "dr"):
        assert out[f"ope/candidate/{est}_low"] <= realised <= out[f"ope/candidate/{est}_high"], (est, out)
        assert out[f"ope/diff/{est}"] == 0.0  # the same router twice
    assert 0 < out["ope/candidate/ess"] <= len(prompts)
    assert out["ope/candidate/dr"] == out["ope/champion/dr"]
    quality_only = production_metrics(settings, trained_router_dir, None, OPEConfig(reward="quality"))
    assert "ope/champion/dr" not in quality_only and quality_only["ope/candidate/dr"] >= out["ope/candidate/dr"]
