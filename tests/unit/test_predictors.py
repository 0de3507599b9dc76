"""Per-LLM predictors: one LLM's change touches only its models; nulls, graded labels, cost fallback, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixllm.catalogue import LLMSpec
from mixllm.exceptions import TrainingError
from mixllm.predictors import PredictorBank, PredictorConfig

pytestmark = pytest.mark.unit

CFG = PredictorConfig(n_estimators=20, quality_n_estimators=None, min_child_samples=5, quality_model="lgbm")
KNN = PredictorConfig(n_estimators=20, min_child_samples=5, knn_k=10, knn_smoothing=2.0, prior_smoothing=0.0)
SPECS = {n: LLMSpec(name=n, input_price_per_token=1e-6, output_price_per_token=2e-6) for n in ("a", "b", "c")}


def _log(n: int = 120, seed: int = 0, models=("a", "b")):
    """n queries x models; quality depends on feature 0 differently per model; tokens on feature 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    rows = []
    for m_i, m in enumerate(models):
        for i in range(n):
            good = x[i, 0] > 0 if m_i % 2 == 0 else x[i, 0] < 0
            rows.append({"query_id": f"q{i}", "prompt": f"p{i}", "model": m, "quality": float(good),
                         "cost_usd": 1e-4, "prompt_tokens": 10, "completion_tokens": int(20 + 10 * (x[i, 1] > 0)),
                         "task": None})
    log = pd.DataFrame(rows)
    return x, log, np.tile(np.arange(n), len(models))


def test_fit_predicts_per_llm_quality_and_cost():
    x, log, idx = _log()
    bank = PredictorBank(CFG).fit(x, log, idx, ["a", "b"])
    q, tokens, cost = bank.predict(x, np.full(len(x), 10.0), SPECS)
    assert q.shape == (len(x), 2) and ((q >= 0) & (q <= 1)).all()
    pos = x[:, 0] > 0
    assert q[pos, 0].mean() > 0.7 and q[~pos, 0].mean() < 0.3 and q[pos, 1].mean() < 0.3
    assert tokens[x[:, 1] > 0, 0].mean() > tokens[x[:, 1] <= 0, 0].mean() + 5
    np.testing.assert_allclose(cost, 10 * 1e-6 + tokens * 2e-6)
    assert bank.llms["a"].quality_kind == "binary"


def test_add_trains_only_that_llm_and_remove_drops_only_it():
    x, log, idx = _log(models=("a", "b", "c"))
    bank = PredictorBank(CFG).fit(x, log, idx, ["a", "b"])
    a, b = bank.llms["a"], bank.llms["b"]
    a_model, b_model = a.quality, b.length
    bank.add("c", x, log, idx)
    assert bank.names == ("a", "b", "c")
    assert bank.llms["a"] is a and bank.llms["b"] is b and a.quality is a_model and b.length is b_model
    bank.remove("a")
    assert bank.names == ("b", "c") and bank.llms["b"] is b
    with pytest.raises(TrainingError, match="no log rows"):
        bank.add("zzz", x, log, idx)


def test_null_quality_rows_are_skipped_and_graded_labels_regress():
    x, log, idx = _log()
    log.loc[log.index[:30], "quality"] = np.nan
    graded = log["model"] == "b"
    log.loc[graded, "quality"] = np.where(log.loc[graded, "quality"] > 0.5, 0.8, 0.3)
    bank = PredictorBank(CFG).fit(x, log, idx, ["a", "b"])
    assert bank.llms["a"].meta["quality_rows"] == 90
    assert bank.llms["b"].quality_kind == "regression"
    log["quality"] = np.nan
    with pytest.raises(TrainingError, match="quality label"):
        PredictorBank(CFG).fit(x, log, idx, ["a"])


def test_cost_model_when_token_counts_are_absent_and_constant_targets():
    x, log, idx = _log()
    log["completion_tokens"] = None
    log["cost_usd"] = np.where(x[idx, 1] > 0, 4e-4, 1e-4)
    log.loc[log["model"] == "b", "quality"] = 1.0  # never fails: a constant model, not an error
    bank = PredictorBank(CFG).fit(x, log, idx, ["a", "b"])
    q, tokens, cost = bank.predict(x, np.full(len(x), 10.0), SPECS)
    assert bank.llms["a"].target == "cost" and np.isnan(tokens).all()
    assert cost[x[:, 1] > 0, 0].mean() > 2 * cost[x[:, 1] <= 0, 0].mean()
    assert (q[:, 1] == 1.0).all()


def test_the_bank_in_one_step_equals_each_llms_own_prediction_for_both_length_targets():
    """The bank finishes all LLMs at once (clip, expm1, prices); LLMs predicting tokens and LLMs predicting cost sit
    side by side, and one row (the service's fast LightGBM path) must agree with many."""
    x, log, idx = _log(models=("a", "b", "c"))
    log.loc[log["model"] == "b", "completion_tokens"] = None  # b: a cost model
    bank = PredictorBank(CFG).fit(x, log, idx, ["a", "b", "c"])
    assert [p.target for p in bank.llms.values()] == ["tokens", "cost", "tokens"]
    specs = {**SPECS, "c": LLMSpec(name="c", input_price_per_token=3e-6, output_price_per_token=7e-6)}
    tokens = np.arange(len(x), dtype=float) + 5
    for rows in (slice(0, 1), slice(0, len(x))):
        got = bank.predict(x[rows], tokens[rows], specs)
        for j, name in enumerate(bank.names):
            own = bank.llms[name].predict(x[rows], tokens[rows], specs[name])
            for g, w in zip(got, own):
                np.testing.assert_allclose(g[:, j], w, rtol=1e-12)
    np.testing.assert_allclose(got[2][:, 2], tokens * 3e-6 + got[1][:, 2] * 7e-6)  # c's own prices
    assert np.isnan(got[1][:, 1]).all() and not np.isnan(got[1][:, [0, 2]]).any()


def test_save_load_round_trip_is_exact(tmp_path):
    x, log, idx = _log()
    log.loc[log["model"] == "b", "quality"] = 0.0
    bank = PredictorBank(CFG, seed=3).fit(x, log, idx, ["a", "b"])
    index = bank.save(tmp_path)
    again = PredictorBank.load(tmp_path, index)
    assert again.names == bank.names and again.seed == 3
    for got, want in zip(again.predict(x, np.full(len(x), 10.0), SPECS), bank.predict(x, np.full(len(x), 10.0), SPECS)):
        np.testing.assert_array_equal(got, want)


def test_quality_boosts_from_the_tag_prior_and_persists_it(tmp_path):
    """With one near-zero tree the quality model IS the smoothed per-tag mean of the row's tag (unknown tag: the
    global mean); the prior travels with the saved bank."""
    x, log, idx = _log(n=200)
    tags = np.where(np.arange(200) < 100, "t1", "t2")
    log.loc[(log["model"] == "a") & (idx >= 100), "quality"] = 1.0  # model a always right on tag t2
    cfg = PredictorConfig(n_estimators=20, quality_n_estimators=1, learning_rate=1e-6, min_child_samples=5,
                          prior_smoothing=0.0, quality_model="lgbm")
    bank = PredictorBank(cfg).fit(x, log, idx, ["a", "b"], tags=tags)
    q, _, _ = bank.predict(x[:4], np.full(4, 10.0), SPECS, tags=np.array(["t1", "t2", "t2", "other"]))
    a = log[log["model"] == "a"]["quality"].to_numpy()
    np.testing.assert_allclose(q[:, 0], [a[:100].mean(), 1.0, 1.0, a.mean()], atol=0.011)  # logit clip at 0.99
    again = PredictorBank.load(tmp_path, bank.save(tmp_path))
    np.testing.assert_array_equal(again.predict(x[:4], np.full(4, 10.0), SPECS, tags=np.array(["t1", "t2", "t2", "x"]))[0], q)
    plain = PredictorBank(cfg.model_copy(update={"tag_prior": False})).fit(x, log, idx, ["a", "b"], tags=tags)
    assert "tag_prior" not in plain.llms["a"].meta


def test_single_row_fast_path_matches_batched_lightgbm(tmp_path):
    """One-prompt requests use LightGBM's single-row C API; it must give exactly what Booster.predict gives, with
    and without a tag prior (raw score + base, then the link), also after a save/load round trip."""
    x, log, idx = _log()
    tags = np.where(x[:, 0] > 1, "hi", "lo")
    with_prior = PredictorBank(CFG.model_copy(update={"quality_n_estimators": 10})).fit(x, log, idx, ["a", "b"],
                                                                                          tags=tags)
    plain = PredictorBank(CFG).fit(x, log, idx, ["a", "b"])
    loaded = PredictorBank.load(tmp_path, with_prior.save(tmp_path))
    tokens = np.full(len(x), 10.0)
    for bank in (with_prior, plain, loaded):
        batched = bank.predict(x[:12], tokens[:12], SPECS, tags[:12])
        for i in range(12):
            single = bank.predict(x[i:i + 1], tokens[i:i + 1], SPECS, tags[i:i + 1])
            for b_arr, s_arr in zip(batched, single):
                np.testing.assert_allclose(s_arr[0], b_arr[i], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="features"):
        from mixllm.predictors import _single_row

        _single_row(plain.llms["a"].length, raw=False)(np.zeros(3))


def _unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_knn_quality_is_the_neighbour_mean_shrunk_to_the_tag_prior():
    """Exact formula on a tiny memory: (sum of the k nearest same-tag labels + s x tag mean) / (k + s); a query of
    an unseen tag gets the global mean; unknown labels take a slot but no weight."""
    emb = _unit_rows(np.array([[1, 0], [0.9, 0.1], [0.1, 0.9], [0, 1], [1, 0.05], [0.05, 1]], float))
    log = pd.DataFrame({"query_id": [f"q{i}" for i in range(6)], "prompt": "p", "model": "a",
                        "quality": [1.0, 1.0, 0.0, 0.0, np.nan, 1.0], "cost_usd": 1e-4, "prompt_tokens": 10,
                        "completion_tokens": 5, "task": None})
    tags = np.array(["t", "t", "t", "t", "t", "u"])
    cfg = KNN.model_copy(update={"knn_k": 2, "knn_smoothing": 1.0})
    bank = PredictorBank(cfg).fit(emb, log, np.arange(6), ["a"], tags=tags, emb=emb)
    query = _unit_rows(np.array([[1, 0.02], [0.02, 1], [1, 0], [0.5, 0.5]], float))
    q, _, _ = bank.predict(query, np.full(4, 10.0), SPECS, tags=np.array(["t", "t", "u", "zzz"]), emb=query)
    prior_t, prior_u, glob = 0.5, 1.0, 0.6  # tag t labels 1,1,0,0 (row 4 unknown); u: 1; all known: 3/5
    np.testing.assert_allclose(q[:, 0], [(1 + prior_t) / (1 + 1),  # neighbours rows 0 and 4: one known label
                                         (0 + 0 + prior_t) / 3, (1 + prior_u) / 2, glob])


def test_knn_quality_learns_local_structure_and_shares_one_memory(tmp_path):
    x, log, idx = _log(n=200)
    emb = _unit_rows(x)
    bank = PredictorBank(KNN).fit(x, log, idx, ["a", "b"], emb=emb)
    q, _, _ = bank.predict(x, np.full(len(x), 10.0), SPECS, emb=emb)
    pos = x[:, 0] > 0
    assert q[pos, 0].mean() > q[~pos, 0].mean() + 0.2 and q[pos, 1].mean() < q[~pos, 1].mean() - 0.2
    assert bank.llms["a"].quality.bank is bank.llms["b"].quality.bank  # one memory for LLMs trained together
    assert bank._knn_groups() is bank._knn_groups()  # grouping cached between requests (no re-hashing per query)
    index = bank.save(tmp_path)
    assert len(list(tmp_path.glob("knn_bank_*.npy"))) == 1
    again = PredictorBank.load(tmp_path, index)
    np.testing.assert_array_equal(again.predict(x, np.full(len(x), 10.0), SPECS, emb=emb)[0], q)
    bank.add("c", x, log.assign(model=log["model"].replace({"a": "c"})), idx, emb=emb.copy())
    np.testing.assert_array_equal(bank.predict(x, np.full(len(x), 10.0), SPECS, emb=emb)[0][:, :2], q)
    np.testing.assert_array_equal(bank.predict(x, np.full(len(x), 10.0), SPECS, emb=emb)[0][:, 2], q[:, 0])


def test_the_grouped_knn_estimate_equals_each_llms_own_estimate():
    """The bank estimates all LLMs that share memory rows in one vectorised step; it must give what each LLM's own
    KNNQuality would (labels, tag priors incl. unseen tags, unknown labels, per-LLM smoothing)."""
    x, log, idx = _log(n=150, models=("a", "b", "c"))
    log.loc[log.index[::7], "quality"] = np.nan  # unknown labels take a neighbour slot but no weight
    emb = _unit_rows(x)
    tags = np.where(x[:, 1] > 0, "t1", "t2")
    bank = PredictorBank(KNN.model_copy(update={"prior_smoothing": 3.0})).fit(x, log, idx, ["a", "b", "c"],
                                                                              tags=tags, emb=emb)
    bank.llms["c"].quality.smoothing = 7.0  # same memory rows, different shrinkage: still one group
    bank._groups = None
    (group,), = [g for _, g in bank._knn_groups()]
    assert group.names == ["a", "b", "c"]
    query_tags = np.where(x[:, 2] > 0.5, "zzz", tags)  # some tags the memory has never seen
    q = bank.predict(x, np.full(len(x), 10.0), SPECS, tags=query_tags, emb=emb)[0]
    for j, name in enumerate(bank.names):
        own = bank.llms[name].predict(x, np.full(len(x), 10.0), SPECS[name], query_tags, emb)[0]
        np.testing.assert_allclose(q[:, j], own, rtol=1e-12, atol=1e-12)


def test_llms_with_their_own_memory_rows_share_one_search_with_the_whole_bank():
    """An LLM logged on only some queries keeps its own memory rows (a column subset of the shared bank); it is
    searched with the LLMs whose rows are the whole bank (one group, each LLM's k nearest among its own rows).
    Both must equal each LLM's own estimate, one query or many."""
    x, log, idx = _log(n=120, models=("a", "b", "c"))
    log = log[~((log["model"] == "c") & (log["query_id"].str[1:].astype(int) % 3 == 0))]
    idx = np.array([int(q[1:]) for q in log["query_id"]])
    emb = _unit_rows(x)
    bank = PredictorBank(KNN).fit(x, log.reset_index(drop=True), idx, ["a", "b", "c"], emb=emb)
    groups = [g for _, gs in bank._knn_groups() for g in gs]
    assert [(g.names, g.whole) for g in groups] == [(["a", "b", "c"], True)]
    for rows in (slice(0, 1), slice(0, len(x))):
        q = bank.predict(x[rows], np.full(len(x), 10.0)[rows], SPECS, emb=emb[rows])[0]
        for j, name in enumerate(bank.names):
            own = bank.llms[name].predict(x[rows], np.full(len(x), 10.0)[rows], SPECS[name], None, emb[rows])[0]
            np.testing.assert_allclose(q[:, j], own, rtol=1e-12, atol=1e-12)


def test_one_search_per_bank_equals_each_llms_own_search_with_missing_cells_shuffled_and_repeated_rows():
    """The hot path of the service: LLMs trained from one snapshot share one search although their memories differ
    (each LLM's rows in its own order, as canonical_rows leaves them; rows missing for some LLMs; a query logged
    twice for one LLM; unknown labels; tags, one of them unseen). Predictions must equal each LLM's own KNNQuality
    search over its own memory, for one query (the service) and for many."""
    rng = np.random.default_rng(3)
    x, log, idx = _log(n=300, models=("a", "b", "c", "d"))
    log = log.assign(idx=idx).sample(frac=1.0, random_state=4)  # each LLM's rows in another order
    drop = (log["model"] == "b") & (rng.random(len(log)) < 0.1) | (log["model"] == "d") & (log["idx"] < 40)
    log.loc[rng.random(len(log)) < 0.05, "quality"] = np.nan
    # a repeated row has its twin's label: twins tie, and which twin fills the k-th slot is arbitrary in both paths
    log = pd.concat([log[~drop], log[(log["model"] == "c") & (log["idx"] % 9 == 0)]]).reset_index(drop=True)
    emb = _unit_rows(x)
    tags = np.where(x[:, 1] > 0.3, "t1", np.where(x[:, 2] > 0, "t2", "t3"))
    bank = PredictorBank(KNN.model_copy(update={"knn_k": 25})).fit(x, log, log["idx"].to_numpy(), list("abcd"),
                                                                  tags=tags, emb=emb)
    (bank_groups,) = [gs for _, gs in bank._knn_groups()]
    assert [g.names for g in bank_groups] == [list("abcd")] and bank_groups[0].present is not None
    query_tags = np.where(x[:, 3] > 1.5, "unseen", tags)
    for rows in [slice(i, i + 1) for i in range(0, 300, 37)] + [slice(0, 300)]:
        q = bank.predict(x[rows], np.full(300, 10.0)[rows], SPECS | {"d": SPECS["a"]}, tags=query_tags[rows],
                         emb=emb[rows])[0]
        for j, name in enumerate(bank.names):
            own = bank.llms[name].quality_output(x[rows], query_tags[rows], emb[rows])
            np.testing.assert_allclose(q[:, j], np.clip(own, 0, 1), rtol=1e-12, atol=1e-12)
    untagged = PredictorBank(KNN.model_copy(update={"knn_k": 25})).fit(x, log, log["idx"].to_numpy(),
                                                                      list("abcd"), emb=emb)
    assert len([g for _, gs in untagged._knn_groups() for g in gs]) == 1
    q = untagged.predict(x, np.full(300, 10.0), SPECS | {"d": SPECS["a"]}, emb=emb)[0]
    for j, name in enumerate(untagged.names):
        np.testing.assert_allclose(q[:, j], np.clip(untagged.llms[name].quality_output(x, None, emb), 0, 1),
                                   rtol=1e-12, atol=1e-12)


def test_several_models_on_one_row_share_its_conversion_and_match_booster_predict():
    """`_predict_each` (the length models of every LLM on the service's one-row requests) converts the row once;
    each column must be that model's own Booster.predict, constants pass through, a wrong width is refused."""
    from mixllm.predictors import _predict_each

    x, log, idx = _log(models=("a", "b", "c"))
    bank = PredictorBank(CFG).fit(x, log, idx, ["a", "b", "c"])
    models = [p.length for p in bank.llms.values()] + [3.5]
    for rows in (x[:1], x[5:6].astype(np.float32), x[:7]):
        got = _predict_each(models, rows)
        assert got.shape == (len(rows), 4)
        for j, m in enumerate(models[:3]):
            np.testing.assert_allclose(got[:, j], m.predict(rows, num_threads=1), rtol=1e-12)
        np.testing.assert_array_equal(got[:, 3], 3.5)
    with pytest.raises(ValueError, match="features"):
        _predict_each(models, np.zeros((1, 3)))


def test_tagged_memories_are_searched_per_tag_with_the_same_neighbours_as_the_masked_search():
    """The bank searches only the rows of each query's tag (a contiguous copy per tag); the neighbours, and so the
    estimates, must be those of the masked search over the whole memory: one query or many, a tag with fewer rows
    than k, a tag the memory has never seen."""
    x, log, idx = _log(n=160, models=("a", "b"))
    emb = _unit_rows(x)
    tags = np.where(x[:, 1] > 0.8, "small", np.where(x[:, 2] > 0, "t1", "t2"))
    assert 0 < (tags == "small").sum() < KNN.knn_k * 4
    bank = PredictorBank(KNN.model_copy(update={"knn_k": 40})).fit(x, log, idx, ["a", "b"], tags=tags, emb=emb)
    (group,) = [g for _, gs in bank._knn_groups() for g in gs]
    assert sorted(group.by_tag) == ["small", "t1", "t2"]
    assert all(sub.flags.c_contiguous and len(sub) == len(pos) for pos, sub in group.by_tag.values())
    query_tags = np.where(x[:, 3] > 1.2, "unseen", tags)
    for rows in [slice(i, i + 1) for i in range(0, 160, 23)] + [slice(0, 160)]:
        q = bank.predict(x[rows], np.full(160, 10.0)[rows], SPECS, tags=query_tags[rows], emb=emb[rows])[0]
        for j, name in enumerate(bank.names):  # each LLM's own KNNQuality: masked search over the whole memory
            own = bank.llms[name].predict(x[rows], np.full(160, 10.0)[rows], SPECS[name], query_tags[rows],
                                          emb[rows])[0]
            np.testing.assert_allclose(q[:, j], own, rtol=1e-12, atol=1e-12)
    got_idx, got_valid = group.search(emb[:5], tags[:5])
    mask_idx, mask_valid = bank.llms["a"].quality.neighbours(emb[:5] @ emb.T, tags[:5])
    for i in range(5):
        assert set(got_idx[i][got_valid[i]]) == set(mask_idx[i][mask_valid[i]])


def test_fast_single_row_path_equals_the_public_booster_predict_on_random_rows():
    """`_SingleRow` calls LightGBM's private C API; pyproject pins lightgbm to the release it was verified on. On
    random rows (outside the training range too), raw and transformed, binary and regression, it must give exactly
    what the public `Booster.predict` gives; an unverified release must not use it."""
    import importlib.metadata
    import re
    from pathlib import Path

    import lightgbm as lgb

    from mixllm.predictors import FAST_SINGLE_ROW, VERIFIED_LIGHTGBM, _single_row

    assert lgb.__version__ in VERIFIED_LIGHTGBM and FAST_SINGLE_ROW
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.exists():  # a checkout: the pin and the verified release are the same
        pin = re.search(r'"lightgbm==([^"]+)"', pyproject.read_text())
        assert pin and pin.group(1) in VERIFIED_LIGHTGBM, "pin lightgbm exactly to a verified release"
    assert importlib.metadata.version("lightgbm") == lgb.__version__
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 6))
    for objective, y in (("binary", (x[:, 0] + rng.normal(size=300) > 0).astype(float)),
                         ("regression", x[:, 1] * 3 + rng.normal(size=300))):
        booster = lgb.train({"objective": objective, "num_leaves": 7, "verbosity": -1, "num_threads": 1},
                            lgb.Dataset(x, label=y), num_boost_round=30)
        rows = np.vstack([rng.normal(size=(40, 6)), rng.normal(scale=10, size=(10, 6))])
        for raw in (False, True):
            fast = np.array([_single_row(booster, raw)(row) for row in rows])
            public = booster.predict(rows, raw_score=raw, num_threads=1)
            np.testing.assert_allclose(fast, public, rtol=1e-13, atol=1e-13)


def _bandit_log(seed: int = 0, n: int = 3000, n_full: int = 400):
    """A log of one LLM where the logging policy chose it more often on the queries where it is good.

    Quality depends on a hidden factor h (P(good) = sigmoid(2h)) that the neighbour space (the columns of `emb`
    other than h) does not show; the policy saw h and chose the LLM with propensity clip(sigmoid(3h), 0.05, 0.95).
    Plus `n_full` full-information queries (propensity null) and logged rows without feedback (quality null).
    Returns (features, emb, log, row index, true mean quality over all queries)."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=n)
    other = rng.normal(size=(n, 3))
    p_good = 1 / (1 + np.exp(-2 * h))
    good = (rng.random(n) < p_good).astype(float)
    propensity = np.clip(1 / (1 + np.exp(-3 * h)), 0.05, 0.95)
    full = np.arange(n) < n_full
    chosen = full | (rng.random(n) < propensity)
    quality = np.where(~full & (rng.random(n) < 0.2), np.nan, good)  # 20% of logged decisions got no feedback
    rows = np.nonzero(chosen)[0]
    log = pd.DataFrame({"query_id": [f"q{i}" for i in rows], "prompt": "p", "model": "a", "quality": quality[rows],
                        "propensity": np.where(full[rows], np.nan, propensity[rows]), "cost_usd": 1e-4,
                        "prompt_tokens": 10, "completion_tokens": 20, "task": None})
    x = np.column_stack([other, h])
    return x, _unit_rows(np.column_stack([other, np.zeros(n)]) + 1e-3), log, rows, float(p_good.mean())


def _ips_se(log: pd.DataFrame, clip: float) -> float:
    """Standard error of the self-normalised inverse-propensity mean of the labelled rows (the test's margin)."""
    known = log["quality"].notna().to_numpy()
    w = np.where(log["propensity"].isna(), 1.0, 1.0 / np.maximum(log["propensity"].fillna(1.0), clip))[known]
    y = log["quality"].to_numpy(float)[known]
    mean = np.sum(w * y) / np.sum(w)
    return float(np.sqrt(np.sum(w ** 2 * (y - mean) ** 2)) / np.sum(w))


@pytest.mark.parametrize("quality_model", ["knn", "lgbm"])
def test_inverse_propensity_weights_correct_a_logging_policys_selection_bias(quality_model):
    """Trained on the same rows, the predictors that count every logged decision once overrate the LLM (its rows
    are mostly where it is good); inverse-propensity weights bring the estimate back to the true mean quality:
    within 3 standard errors of the weighted estimate, and closer than the unweighted one by more than 3 of them."""
    x, emb, log, rows, truth = _bandit_log()
    tags = np.full(len(x), "t")
    cfg = PredictorConfig(n_estimators=20, min_child_samples=20, quality_model=quality_model, knn_k=150,
                          bandit_labels="ips")
    se = _ips_se(log, cfg.propensity_clip)
    estimates = {}
    for label, frame in (("weighted", log), ("unweighted", log.assign(propensity=np.nan))):
        bank = PredictorBank(cfg).fit(x, frame, rows, ["a"], tags=tags, emb=emb)
        q = bank.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0][:, 0]
        estimates[label] = (float(q.mean()), bank.llms["a"].meta)
    (weighted, meta), (unweighted, _) = estimates["weighted"], estimates["unweighted"]
    assert meta["logged_policy_rows"] == int(log["propensity"].notna().sum())
    assert meta["quality_rows"] == int(log["quality"].notna().sum())  # no-feedback rows are not failures
    assert abs(weighted - truth) < 3 * se, (weighted, truth, se)
    assert abs(unweighted - truth) > abs(weighted - truth) + 3 * se, (unweighted, weighted, truth, se)
    assert abs(meta["global_quality"] - truth) < 3 * se


def test_weighted_knn_memory_round_trips_and_groups_like_each_llms_own_estimate(tmp_path):
    x, emb, log, rows, _ = _bandit_log(n=600, n_full=100)
    both = pd.concat([log, log.assign(model="b", quality=1 - log["quality"])], ignore_index=True)
    idx = np.r_[rows, rows]
    tags = np.where(x[:, 0] > 0, "t1", "t2")
    bank = PredictorBank(KNN.model_copy(update={"knn_k": 30, "bandit_labels": "ips"})).fit(
        x, both, idx, ["a", "b"], tags=tags, emb=emb)
    assert bank.llms["a"].quality.w is not None
    q = bank.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0]
    for j, name in enumerate(bank.names):
        own = bank.llms[name].predict(x, np.full(len(x), 10.0), SPECS[name], tags, emb)[0]
        np.testing.assert_allclose(q[:, j], own, rtol=1e-12, atol=1e-12)
    again = PredictorBank.load(tmp_path, bank.save(tmp_path))
    np.testing.assert_array_equal(again.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0], q)
    with pytest.raises(TrainingError, match="propensity outside"):
        PredictorBank(KNN).fit(x, both.assign(propensity=1.5), idx, ["a"], tags=tags, emb=emb)


@pytest.mark.parametrize("quality_model", ["knn", "lgbm"])
def test_residual_labels_correct_the_full_information_model_by_what_logged_rows_show(quality_model, tmp_path):
    """bandit_labels="residual": the full-information rows alone train the model; the logged rows only shift it by
    their shrunk, inverse-propensity weighted mean residual per tag (brute force here), so the selection bias of
    the logging policy does not enter the estimate (within 3 standard errors of the truth). A model that is off by
    a constant is corrected by the logged rows; the correction survives save/load and the grouped kNN search."""
    x, emb, log, rows, truth = _bandit_log()
    tags = np.full(len(x), "t")
    cfg = PredictorConfig(n_estimators=20, min_child_samples=20, quality_model=quality_model, knn_k=150,
                          bandit_labels="residual", residual_smoothing=5.0)
    bank = PredictorBank(cfg).fit(x, log, rows, ["a"], tags=tags, emb=emb)
    meta = bank.llms["a"].meta
    full = log["propensity"].isna().to_numpy()
    assert meta["quality_rows"] == int(full.sum())  # the model itself saw only the full-information rows
    assert meta["residual_rows"] == int((~full & log["quality"].notna().to_numpy()).sum())
    q = bank.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0][:, 0]
    assert abs(q.mean() - truth) < 3 * _ips_se(log, cfg.propensity_clip), (q.mean(), truth)

    shifted = log.assign(quality=np.where(full, np.clip(log["quality"] - 0.3, 0, 1), log["quality"]))
    bank = PredictorBank(cfg).fit(x, shifted, rows, ["a"], tags=tags, emb=emb)
    base = PredictorBank(cfg).fit(x, shifted[full], rows[full], ["a"], tags=tags, emb=emb)
    labelled = ~full & log["quality"].notna().to_numpy()
    at = rows[labelled]
    resid = log["quality"].to_numpy(float)[labelled] - np.clip(base.predict(
        x[at], np.full(len(at), 10.0), SPECS, tags=tags[at], emb=emb[at])[0][:, 0], 0, 1)
    w = 1 / np.maximum(log["propensity"].to_numpy(float)[labelled], cfg.propensity_clip)
    n_eff = w.sum() ** 2 / (w ** 2).sum()
    mean = np.sum(w * resid) / w.sum()
    glob = n_eff * mean / (n_eff + 5.0)  # the global correction shrunk toward 0, the tag's toward the global one
    expected = (n_eff * mean + 5.0 * glob) / (n_eff + 5.0)
    assert bank.llms["a"].meta["residual"]["tags"]["t"] == pytest.approx(expected, rel=1e-9)
    q = bank.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0][:, 0]
    q0 = base.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0][:, 0]
    np.testing.assert_allclose(q, np.clip(q0 + expected, 0, 1), atol=1e-12)
    assert abs(q.mean() - truth) < abs(q0.mean() - truth) / 3  # most of the offset is undone
    again = PredictorBank.load(tmp_path, bank.save(tmp_path))
    np.testing.assert_array_equal(again.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0][:, 0], q)


def _difficulty_log(seed: int = 0, n_full: int = 200, n_logged: int = 2000):
    """Two LLMs; half the queries are hard (visible in the neighbour space), and on every query `a` is 0.1 better
    than `b` (P(good): a 0.8 / 0.2, b 0.7 / 0.1 on easy / hard). `n_full` full-information queries, then a
    logging policy that picks `a` on hard queries with probability 0.9 and `b` otherwise (always on easy ones:
    a choice no inverse propensity can undo); one LLM per logged query, all rated. Returns (features, emb, log,
    row index, hard)."""
    rng = np.random.default_rng(seed)
    n = n_full + n_logged
    hard = rng.random(n) < 0.5
    emb = _unit_rows(np.column_stack([hard * 3.0, rng.normal(size=(n, 3))]))
    p = {"a": np.where(hard, 0.2, 0.8), "b": np.where(hard, 0.1, 0.7)}
    rows = []
    for i in range(n):
        if i < n_full:
            chosen, prop = ("a", "b"), None
        else:
            pick_a = hard[i] and rng.random() < 0.9
            chosen, prop = ("a" if pick_a else "b",), (0.9 if pick_a else 0.1 if hard[i] else 1.0)
        for m in chosen:
            rows.append({"query_id": f"q{i}", "prompt": "p", "model": m, "quality": float(rng.random() < p[m][i]),
                         "propensity": prop, "cost_usd": 1e-4, "prompt_tokens": 10, "completion_tokens": 20,
                         "task": None, "row": i})
    log = pd.DataFrame(rows)
    return emb, emb, log.drop(columns="row"), log["row"].to_numpy(), hard


def test_relative_labels_keep_a_querys_difficulty_out_of_the_models_corrections():
    """The policy logged `a` on the hard queries and `b` on the easy ones. Residual labels carry that difficulty
    into the corrections (a's falls, b's rises: b ends up predicted better than a, the reverse of the truth);
    relative labels compare each logged answer with the others logged on similar queries, so the corrections
    stay near equal and `a` stays ahead on both halves by about its true 0.1. ~1 s."""
    x, emb, log, rows, hard = _difficulty_log()
    tags = np.full(len(x), "t")
    out = {}
    for labels in ("residual", "relative"):
        cfg = PredictorConfig(n_estimators=20, min_child_samples=20, knn_k=400, knn_smoothing=0.0,
                              bandit_labels=labels, residual_smoothing=5.0, relative_k=20)
        bank = PredictorBank(cfg).fit(x, log, rows, ["a", "b"], tags=tags, emb=emb)
        corr = {m: bank.llms[m].meta["residual"]["tags"]["t"] for m in ("a", "b")}
        q = bank.predict(x, np.full(len(x), 10.0), SPECS, tags=tags, emb=emb)[0]
        out[labels] = (corr["a"] - corr["b"], [float((q[h, 0] - q[h, 1]).mean()) for h in (hard, ~hard)])
    assert out["residual"][0] < -0.3 and min(out["residual"][1]) < 0, out
    assert abs(out["relative"][0]) < 0.08 and min(out["relative"][1]) > 0.02, out
    assert bank.llms["a"].meta["relative_rows"] == int(((log["model"] == "a") & log["propensity"].notna()).sum())


def test_empirical_bayes_corrections_shrink_by_their_own_noise():
    """residual_shrinkage="empirical_bayes": pure noise corrects nothing; a shift well above its standard error is
    kept nearly whole; tags whose means differ only by noise share the global correction."""
    from mixllm.predictors import _eb_means, _tag_means

    rng = np.random.default_rng(0)
    noise = _eb_means(rng.normal(0.0, 0.4, 40), np.ones(40), None)
    assert noise["global"] == 0.0 and noise["tags"] == {}
    shifted = _eb_means(rng.normal(-0.2, 0.4, 2000), np.ones(2000), None)
    assert -0.23 < shifted["global"] < -0.17
    same = _eb_means(rng.normal(-0.2, 0.4, 3000), np.ones(3000), np.repeat(["a", "b", "c"], 1000))
    assert max(abs(c - same["global"]) for c in same["tags"].values()) < 0.02
    tags = np.repeat(["a", "b"], [1000, 1000])
    apart = _eb_means(np.r_[rng.normal(-0.3, 0.4, 1000), rng.normal(0.1, 0.4, 1000)], np.ones(2000), tags)
    assert apart["tags"]["a"] < -0.25 and apart["tags"]["b"] > 0.05
    assert _tag_means(np.zeros(3), np.ones(3), None, 5.0, "empirical_bayes") == {"global": 0.0, "tags": {}}
