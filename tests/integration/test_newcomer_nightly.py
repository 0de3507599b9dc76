"""A catalogue that gains an LLM: the next night's candidate is the champion plus that LLM alone, on probation.

Real encoder and LightGBM on a slice of the packaged RouterBench sample (12 queries per task): the champion is
trained without one LLM; the snapshot then has that LLM's rows. `add_newcomers` must give a candidate that has it,
whose other LLMs predict exactly what the champion's do and whose greedy routing is the champion's (what the gates
compare), while exploration gives the newcomer its reserved share where it is predicted near the best; a retrain
keeps it on probation until it has `graduation_labels` labelled decisions. ~40 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixllm import pipeline as P
from mixllm import policy
from mixllm.config import get_settings
from mixllm.data import load_training_log
from mixllm.router import MixLLMRouter
from mixllm.routers.registry import load_router

pytestmark = pytest.mark.integration

NEW = "zero-one-ai/Yi-34B-Chat"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("newcomer")
    log = P.subsample(load_training_log(sorted(P.sample_data().glob("*_train.csv*"))), 12, seed=0)
    test = P.subsample(load_training_log(sorted(P.sample_data().glob("*_test.csv*"))), 8, seed=0)
    assert NEW in set(log["model"])
    champion = MixLLMRouter.create(progress=False, cache_dir=str(tmp / "emb")).fit(log[log["model"] != NEW])
    champ_dir = champion.save(tmp / "champion")
    settings = get_settings(home=tmp / "home")
    config = P.PipelineConfig(router={"progress": False, "cache_dir": str(tmp / "emb")})
    names = P.newcomers(log, champ_dir, settings)
    cand_dir = P.add_newcomers(champ_dir, log, names, config, settings, tmp / "candidate")
    return {"log": log, "test": test, "champ_dir": champ_dir, "cand_dir": cand_dir, "names": names,
            "config": config, "settings": settings}


def test_the_snapshot_names_the_newcomer_and_the_candidate_has_it_on_probation(world: dict) -> None:
    assert world["names"] == (NEW,)
    champion, cand = load_router(world["champ_dir"]), load_router(world["cand_dir"])
    assert cand.models == (*champion.models, NEW)
    assert P.probation_of(world["cand_dir"]) == [NEW] and P.probation_of(world["champ_dir"]) == []
    assert cand.version != champion.version and cand.manifest["parent_router_version"] == champion.version
    assert cand.manifest["added_llms"] == [NEW]
    assert P.newcomers(world["log"], world["cand_dir"], world["settings"]) == ()  # nothing new the next night


def test_other_llms_are_untouched_and_greedy_routing_is_the_champions(world: dict) -> None:
    champion, cand = load_router(world["champ_dir"]), load_router(world["cand_dir"])
    prompts = world["test"]["prompt"].drop_duplicates().tolist()
    pc, pn = champion.predict(prompts), cand.predict(prompts)
    m = len(champion.models)
    np.testing.assert_array_equal(pn.quality[:, :m], pc.quality)
    np.testing.assert_array_equal(pn.cost[:, :m], pc.cost)
    for a, b in zip(champion.predictors.llms.values(), list(cand.predictors.llms.values())[:m]):
        assert a.meta == b.meta and a.n_rows == b.n_rows
    for wtp in (0.01, 0.05, 1.0, 1000.0):
        assert [champion.models[j] for j in champion.choose(pc, wtp)] == [cand.models[j] for j in cand.choose(pn, wtp)]


def test_exploration_gives_the_newcomer_its_reserved_share_where_it_is_near_the_best(world: dict) -> None:
    cand = load_router(world["cand_dir"])
    pred = cand.predict(world["test"]["prompt"].drop_duplicates().tolist())
    s = cand.scores(pred, 1000.0)
    p = policy.probabilities(s, cand.exploration)
    j = cand.models.index(NEW)
    greedy = s.score.max(axis=1, where=np.arange(len(cand.models)) != j, initial=-np.inf)
    near = s.score[:, j] >= greedy - cand.exploration.probation_margin
    assert near.any() and not near.all()  # the share goes where it is predicted near the best, not everywhere
    np.testing.assert_allclose(p[:, j], np.where(near, cand.exploration.probation_share, 0.0))
    decisions = cand.decide(pred, 1000.0)
    chosen = np.array([d.model == NEW for d in decisions])
    props = np.array([d.propensity for d in decisions])
    np.testing.assert_allclose(props[chosen], cand.exploration.probation_share)
    assert all(c.reason == policy.PROBATION_REASON for d in decisions for c in d.candidates if c.model == NEW)


def test_its_prior_leans_on_the_other_llms_and_it_graduates_with_enough_labels(world: dict) -> None:
    cand = load_router(world["cand_dir"])
    meta = cand.predictors.llms[NEW].meta
    others = [p.meta["tag_prior"] for n, p in cand.predictors.llms.items() if n != NEW]
    for tag, own in meta["own_tag_prior"]["tags"].items():
        mean = float(np.mean([o["tags"].get(tag, o["global"]) for o in others]))
        assert min(own, mean) - 1e-12 <= meta["tag_prior"]["tags"][tag] <= max(own, mean) + 1e-12
    config, log = world["config"].model_copy(update={"graduation_labels": 3}), world["log"]
    held = P.with_probation(config, world["cand_dir"], log)
    assert held.router["exploration"]["probation"] == [NEW]
    rated = log[log["model"] == NEW].head(3).assign(propensity=0.25, router_version="v")
    graduated = P.with_probation(config, world["cand_dir"], pd.concat([log, rated], ignore_index=True))
    assert graduated.router["exploration"]["probation"] == []
    assert P.with_probation(config, world["champ_dir"], log) is config  # nothing on probation: unchanged


def test_add_newcomers_off_is_a_config_switch() -> None:
    assert P.PipelineConfig().add_newcomers and not P.PipelineConfig(add_newcomers=False).add_newcomers
    assert P.candidate_tags((NEW,), [NEW], "3") == {"candidate": f"champion 3 + {NEW}", "probation": NEW}
    assert P.candidate_tags((), [], "3") == {"candidate": "retrained"}


def test_unused_path_guard(tmp_path: Path) -> None:
    assert P.probation_of(tmp_path) == []
