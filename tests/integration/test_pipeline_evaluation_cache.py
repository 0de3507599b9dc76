"""The champion's evaluation cache (issue 16, night 2 cost): a registered version evaluated on the same held-out
rows with the same settings is read back, not evaluated again, and the gates decide exactly as on a fresh
evaluation. Real router (bundled sample, 12 queries per task, no fine-tuning), real evaluation, no Prefect.
Cost: ~15-30 s on 2 cores (one small training, three evaluations of 24 held-out queries)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mixllm import pipeline as P
from mixllm.config import get_settings
from mixllm.gates import check_gates

pytestmark = pytest.mark.integration

SMALL = {"max_train_queries_per_task": 12, "max_test_queries_per_task": 8, "baselines": ("single", "random"),
         "router": {"epochs": 0, "progress": False, "predictor": {"n_estimators": 20, "min_child_samples": 5}}}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return set(a) == set(b) and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_second_champion_evaluation_is_a_cache_hit_with_the_same_numbers_and_verdict(tmp_path: Path) -> None:
    from mixllm.data import load_training_log

    config, settings = P.load_pipeline_config(**SMALL), get_settings()
    train = P.subsample(load_training_log(sorted(P.sample_data().glob("*_train.csv*"))), 12, seed=0)
    test = P.held_out(config)
    router, prepared, _ = P.prepare_candidate(train, config, settings)
    per_llm = [P.fit_candidate_llm(s.names[0], router.config, s) for s in P.llm_slices(prepared)]
    router_dir = P.save_candidate(router, prepared, per_llm, tmp_path / "router")
    _, candidate = P.evaluate_router(router_dir, test, config, settings, train)

    first, hit1 = P.champion_evaluation(router_dir, "3", test, config, settings)
    second, hit2 = P.champion_evaluation(router_dir, "3", test, config, settings)
    assert (hit1, hit2) == (False, True)
    assert _same(first, second)
    assert not any(k.startswith("baseline/") for k in first)
    assert _same(first, P.router_metrics(candidate))  # the router's own figures, with or without baselines
    assert check_gates(candidate, first) == check_gates(candidate, second)

    # the nightly stores a candidate's figures under its new version: the night it is champion reads them
    P.store_evaluation(settings, "4", P.held_out_digest(test), config, candidate)
    stored, hit = P.champion_evaluation(router_dir, "4", test, config, settings)
    assert hit and _same(stored, first)

    # the same held-out files read again (stamped with another read time) are the same slice
    assert P.held_out_digest(P.held_out(config)) == P.held_out_digest(test)
    # other held-out rows, another evaluation setting or no version: evaluated again
    fewer = test[test["query_id"].isin(test["query_id"].unique()[:-1])].reset_index(drop=True)
    assert P.held_out_digest(fewer) != P.held_out_digest(test)
    assert P.cached_evaluation(settings, "3", P.held_out_digest(fewer), config) is None
    other_seed = P.load_pipeline_config(**SMALL, seed=1)
    assert P.cached_evaluation(settings, "3", P.held_out_digest(test), other_seed) is None
    assert P.champion_evaluation(router_dir, None, test, config, settings)[1] is False
