"""The decision maker's math: LinUCB updates, waiting penalty, hard constraints, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixllm import policy
from mixllm.catalogue import load_catalogue
from mixllm.exceptions import UnknownModelError
from mixllm.schemas import RouteConstraints

pytestmark = pytest.mark.unit

MODELS = ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat")


def _bandit(k: int = 4, dim: int = 12, seed: int = 0) -> policy.LinUCB:
    rng = np.random.default_rng(seed)
    proj = np.linalg.qr(rng.normal(size=(dim, k)))[0].T  # orthonormal rows [k, dim]
    return policy.LinUCB(proj, np.zeros(dim), lam=1.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(0, 10_000))
def test_linucb_incremental_update_equals_closed_form_ridge(n, seed):
    rng = np.random.default_rng(seed)
    b = _bandit(seed=seed)
    emb = rng.normal(size=(n, 12))
    x = b.context(emb)
    rq, rc = rng.normal(size=n), rng.normal(size=n) * 1e-3
    for i in range(n):
        b.update("m", x[i], rq[i], rc[i])
    a = np.eye(b.dim) * b.lam + x.T @ x
    np.testing.assert_allclose(b.a_inv["m"], np.linalg.inv(a), atol=1e-8)
    dq, dc, width = b.estimates(["m"], x)
    np.testing.assert_allclose(dq[:, 0], x @ np.linalg.solve(a, x.T @ rq), atol=1e-8)
    np.testing.assert_allclose(dc[:, 0], x @ np.linalg.solve(a, x.T @ rc), atol=1e-10)
    np.testing.assert_allclose(width[:, 0], np.sqrt(np.einsum("ij,ij->i", x @ np.linalg.inv(a), x)), atol=1e-8)


def test_linucb_width_shrinks_where_observed_and_state_round_trips():
    b = _bandit()
    b.add_arm("m")
    x = b.context(np.random.default_rng(1).normal(size=(2, 12)))
    before = b.estimates(["m"], x)[2][:, 0]
    for _ in range(5):
        b.update("m", x[0], -0.5, None)
    after = b.estimates(["m"], x)[2][:, 0]
    assert after[0] < before[0] / 2  # seen context: much narrower
    assert b.estimates(["m"], x[:1])[0][0, 0] < -0.3  # negative residual learned
    again = policy.LinUCB.from_state(b.state())
    for got, want in zip(again.estimates(["m"], x), b.estimates(["m"], x)):
        np.testing.assert_array_equal(got, want)
    b.remove_arm("m")
    assert "m" not in b.a_inv and again.n_updates["m"] == 5


def test_linucb_estimates_follow_every_update_and_greedy_skips_the_width():
    """The per-arm solutions are cached between feedback events: a stale cache would keep routing on old feedback."""
    rng = np.random.default_rng(3)
    b = _bandit()
    x = b.context(rng.normal(size=(4, 12)))
    for arm in ("m", "n"):
        b.add_arm(arm)
    seen = [b.estimates(["m", "n"], x)]
    for i in range(6):
        b.update("mn"[i % 2], x[i % 4], rng.normal(), rng.normal() * 1e-3)
        got = b.estimates(["m", "n"], x)
        fresh = policy.LinUCB.from_state(b.state()).estimates(["m", "n"], x)  # no cache
        for g, f in zip(got, fresh):
            np.testing.assert_allclose(g, f, atol=1e-12)
        assert not np.allclose(got[0], seen[-1][0])  # each update moved the quality correction
        seen.append(got)
    dq, dc, width = b.estimates(["m", "n"], x, with_width=False)
    np.testing.assert_array_equal(dq, seen[-1][0])
    np.testing.assert_array_equal(dc, seen[-1][1])
    assert not width.any() and seen[-1][2].all()
    b.remove_arm("n")
    assert b.estimates(["m", "n"], x)[0][:, 1].tolist() == [0.0] * 4  # a removed arm is unknown again


def test_waiting_penalty_zero_within_tolerance_then_exponential():
    tau = np.full(6, 1000.0)
    w = np.array([0.0, 999.0, 1000.0, 1500.0, 2000.0, 2500.0])
    p = policy.waiting_penalty(w, tau, growth=1.0)
    assert p[:3].tolist() == [0.0, 0.0, 0.0]
    assert 0 < p[3] < p[4] < p[5]
    np.testing.assert_allclose(p[3:] + 1, np.exp([0.5, 1.0, 1.5]))  # e^(excess/tau): equal steps, equal ratios
    assert np.isfinite(policy.waiting_penalty(np.array([1e12]), np.array([1.0]))).all()


def _scores(quality, cost, wtp=0.01, penalty=None, constraints=None):
    quality, cost = np.atleast_2d(quality).astype(float), np.atleast_2d(cost).astype(float)
    ok, reasons = policy.constraint_mask(MODELS, cost, constraints, load_catalogue())
    pen = np.zeros_like(cost) if penalty is None else np.broadcast_to(penalty, cost.shape)
    return policy.score(quality, cost, wtp, np.zeros_like(cost), pen, 0.0, 1.0, ok, reasons)


def test_score_trades_quality_for_cost_and_ties_break_to_first():
    q, c = [0.9, 0.8, 0.5], [1e-2, 1e-3, 1e-4]
    assert policy.best(_scores(q, c, wtp=10.0))[0] == 0  # cost barely matters
    assert policy.best(_scores(q, c, wtp=0.01))[0] == 1  # 0.1 quality worth < 0.009 USD at 0.01 USD/quality
    assert policy.best(_scores(q, c, wtp=1e-5))[0] == 2  # cheapest wins
    tie = _scores([0.5, 0.5, 0.5], [1e-3, 1e-3, 1e-3])
    assert policy.best(tie)[0] == 0
    again = _scores(q, c, wtp=0.01)
    assert np.array_equal(policy.best(again), policy.best(_scores(q, c, wtp=0.01)))


def test_waiting_penalty_moves_choice_away_from_queued_model():
    q, c = [0.9, 0.8, 0.5], [1e-3, 1e-3, 1e-3]
    assert policy.best(_scores(q, c))[0] == 0
    pen = policy.waiting_penalty(np.array([3000.0, 0, 0]), np.full(3, 1000.0))
    assert policy.best(_scores(q, c, penalty=pen))[0] == 1


def test_constraints_allowed_models_and_max_cost_with_reasons():
    cons = RouteConstraints(allowed_models=(MODELS[1], MODELS[2]), max_cost_usd=5e-4)
    s = _scores([[0.9, 0.8, 0.5], [0.9, 0.8, 0.5]], [[1e-2, 1e-3, 1e-4], [1e-2, 1e-4, 1e-4]], wtp=10.0,
                constraints=cons)
    assert policy.best(s).tolist() == [2, 1]
    assert s.reasons[0][0] == "not in allowed_models"
    assert "exceeds max_cost_usd" in s.reasons[0][1] and 1 not in s.reasons[1]
    assert np.isneginf(s.score[0, :2]).all()
    none = _scores([0.9, 0.8, 0.5], [1e-2, 1e-2, 1e-2], constraints=RouteConstraints(max_cost_usd=1e-6))
    assert policy.best(none).tolist() == [-1]


def test_unknown_allowed_model_raises():
    with pytest.raises(UnknownModelError, match="not in LLM catalogue"):
        _scores([0.9, 0.8, 0.5], [1e-3] * 3, constraints=RouteConstraints(allowed_models=("gpt-17",)))
    with pytest.raises(UnknownModelError, match="no predictors"):  # in the catalogue, not in this router
        _scores([0.9, 0.8, 0.5], [1e-3] * 3, constraints=RouteConstraints(allowed_models=("claude-v2",)))


# ------------------------------------------------------------------ stochastic exploration
def _raw(quality, cost, wtp=1.0, eligible=None) -> policy.Scores:
    """Scores of m made-up candidates (no catalogue: exploration only reads score, cost and eligibility)."""
    q, c = np.atleast_2d(quality).astype(float), np.atleast_2d(cost).astype(float)
    ok = np.ones(q.shape, bool) if eligible is None else np.atleast_2d(eligible)
    reasons = [{j: "excluded" for j in np.nonzero(~r)[0]} for r in ok]
    zeros = np.zeros_like(q)
    return policy.score(q, c, wtp, zeros, zeros, 0.0, 0.0, ok, reasons)


def _reference(score, cost, eligible, cfg: policy.ExplorationConfig) -> np.ndarray:
    """One query's probabilities, written out loop by loop from ExplorationConfig's docstring (the spec)."""
    m = len(score)
    idx = [j for j in range(m) if eligible[j]]
    if not idx:
        return np.zeros(m)
    g = max(idx, key=lambda j: (score[j], -j))
    p = np.zeros(m)
    if cfg.mode == "off":
        p[g] = 1.0
        return p
    cand = [j for j in idx if j != g and np.isfinite(score[j])
            and (cfg.max_cost_ratio is None or cost[j] <= cfg.max_cost_ratio * cost[g])]
    if cfg.mode == "softmax":
        w = {j: np.exp((score[j] - score[g]) / cfg.temperature) for j in cand}
        for j in cand:
            p[j] = w[j] / (1.0 + sum(w.values()))
    else:
        top = sorted(cand, key=lambda j: (-score[j], j))[: cfg.top_k - 1]
        for j in top:
            p[j] = cfg.epsilon / len(top)
    for j in cand:  # the floor: every explorable candidate at least `floor`, before the bounds
        p[j] = max(p[j], cfg.floor)
    factor = 1.0
    if p.sum() > cfg.max_share:
        factor = cfg.max_share / p.sum()
    extra = sum(p[j] * (cost[j] - cost[g]) for j in range(m) if p[j] > 0)
    if cfg.max_extra_cost is not None and extra > cfg.max_extra_cost * cost[g]:
        factor = min(factor, cfg.max_extra_cost * cost[g] / extra)
    p *= factor
    p[g] = 1.0 - p.sum()
    return p


CONFIGS = [
    policy.ExplorationConfig(mode="softmax", temperature=0.05, max_share=1.0),
    policy.ExplorationConfig(mode="softmax", temperature=0.2, max_share=0.15),
    policy.ExplorationConfig(mode="softmax", temperature=1.0, max_share=0.5, max_cost_ratio=3.0,
                             max_extra_cost=0.2),
    policy.ExplorationConfig(mode="epsilon", epsilon=0.3, top_k=3, max_share=1.0),
    policy.ExplorationConfig(mode="epsilon", epsilon=0.5, top_k=4, max_share=0.2, max_extra_cost=0.1),
    policy.ExplorationConfig(mode="softmax", temperature=0.02, max_share=0.15, floor=0.03),
    policy.ExplorationConfig(mode="epsilon", epsilon=0.1, top_k=2, max_share=0.3, floor=0.05, max_cost_ratio=3.0),
]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(range(len(CONFIGS))))
def test_probabilities_match_the_written_out_spec_and_bounds_hold(seed, which):
    cfg = CONFIGS[which]
    rng = np.random.default_rng(seed)
    n, m = 6, 5
    quality = rng.uniform(0.3, 1.0, (n, m)).round(1)  # rounded: ties happen
    cost = rng.choice([0.001, 0.002, 0.004, 0.01], (n, m))
    eligible = rng.random((n, m)) > 0.25
    s = _raw(quality, cost, wtp=0.05, eligible=eligible)
    p = policy.probabilities(s, cfg)
    for i in range(n):
        np.testing.assert_allclose(p[i], _reference(s.score[i], cost[i], eligible[i], cfg), atol=1e-12)
    greedy = policy.best(s)
    has = greedy >= 0
    np.testing.assert_allclose(p[has].sum(axis=1), 1.0)
    assert (p[~has] == 0).all() and (p[~eligible] == 0).all()
    g_p = p[has, greedy[has]]
    assert (1.0 - g_p <= cfg.max_share + 1e-12).all()  # share bound
    c_g = cost[has, greedy[has]]
    if cfg.max_extra_cost is not None:  # spend bound: expected cost <= (1 + max_extra_cost) x greedy's
        assert ((p[has] * cost[has]).sum(axis=1) <= (1 + cfg.max_extra_cost) * c_g + 1e-15).all()
    if cfg.max_cost_ratio is not None:
        assert (p[has][cost[has] > cfg.max_cost_ratio * c_g[:, None]] == 0).all()


def test_off_and_none_are_greedy_with_propensity_one():
    s = _raw([[0.9, 0.8, 0.5], [0.1, 0.2, 0.3]], [[1e-2, 1e-3, 1e-4]] * 2, eligible=[[1, 1, 1], [0, 0, 0]])
    rng = np.random.default_rng(0)
    for cfg in (None, policy.ExplorationConfig()):
        chosen, prop = policy.select(s, cfg, rng)
        assert chosen.tolist() == policy.best(s).tolist() == [0, -1] and prop.tolist() == [1.0, 1.0]
    with pytest.raises(Exception, match="random generator"):
        policy.select(s, CONFIGS[0], None)


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{c.mode}-{i}" for i, c in enumerate(CONFIGS)])
def test_empirical_choice_frequencies_match_the_propensities(cfg):
    """20,000 draws of one query: each candidate's share is its probability (within 5 binomial standard errors),
    and every returned propensity is exactly the probability of the candidate it comes with."""
    n = 20_000
    quality = np.array([0.80, 0.78, 0.70, 0.75, 0.20])
    cost = np.array([0.002, 0.001, 0.004, 0.0045, 0.001])
    eligible = np.array([True, True, True, True, False])
    s = _raw(np.tile(quality, (n, 1)), np.tile(cost, (n, 1)), wtp=0.05, eligible=np.tile(eligible, (n, 1)))
    p = policy.probabilities(s, cfg)[0]
    chosen, prop = policy.select(s, cfg, np.random.default_rng(7))
    freq = np.bincount(chosen, minlength=5) / n
    tol = 5 * np.sqrt(p * (1 - p) / n) + 1e-12
    assert (np.abs(freq - p) <= tol).all(), (freq, p)
    np.testing.assert_array_equal(prop, p[chosen])
    assert freq[4] == 0 and (prop > 0).all()
    assert (p > 0).sum() >= 2  # each config really explores this query


def test_validation_says_what_is_wrong():
    from pydantic import ValidationError

    for bad in ({"mode": "thompson"}, {"mode": "softmax", "temperature": 0}, {"epsilon": 1.5}, {"top_k": 1},
                {"mode": "softmax", "max_share": 0}, {"mode": "epsilon", "epsilon": 0}, {"max_cost_ratio": 0.5},
                {"max_extra_cost": -1}, {"tempreature": 1}, {"floor": -0.1}, {"floor": 0.9}):
        with pytest.raises(ValidationError):
            policy.ExplorationConfig(**bad)


# ------------------------------------------------------------------ probation (a newcomer, exploration only)
def _probation_scores(quality, cost, probation, wtp=0.05, eligible=None) -> policy.Scores:
    q, c = np.atleast_2d(quality).astype(float), np.atleast_2d(cost).astype(float)
    ok = np.ones(q.shape, bool) if eligible is None else np.atleast_2d(eligible).astype(bool)
    zeros = np.zeros_like(q)
    return policy.score(q, c, wtp, zeros, zeros, 0.0, 0.0, ok, [{} for _ in q], np.asarray(probation, bool))


@pytest.mark.parametrize("mode", ["off", "softmax"])
def test_probation_candidate_is_never_greedy_and_gets_its_reserved_share_where_near_best(mode):
    """Candidate 2 is on probation: scored best on query 0, 0.05 below greedy on query 1, 0.3 below on query 2;
    alone eligible on query 3. Greedy never picks it where another is eligible; exploration gives it exactly
    probation_share where it is within the margin, nothing elsewhere; the regular mode ignores it."""
    cfg = policy.ExplorationConfig(mode=mode, temperature=0.02, max_share=0.1, probation=("x",),
                                   probation_share=0.2, probation_margin=0.1)
    quality = [[0.7, 0.6, 0.9], [0.7, 0.6, 0.65], [0.7, 0.6, 0.4], [0.7, 0.6, 0.5]]
    cost = [[1e-3, 1e-3, 1e-3]] * 4
    eligible = [[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 1]]
    s = _probation_scores(quality, cost, [False, False, True], eligible=eligible)
    assert policy.best(s).tolist() == [0, 0, 0, 2]
    assert s.reasons[0] == {2: policy.PROBATION_REASON}
    p = policy.probabilities(s, cfg)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 2] == pytest.approx(0.2) and p[1, 2] == pytest.approx(0.2) and p[2, 2] == 0.0
    assert p[3].tolist() == [0.0, 0.0, 1.0]  # the only eligible one: chosen, not explored
    regular = policy.probabilities(s, cfg.model_copy(update={"probation": ()}))[:, 1]  # candidate 1's share alone
    np.testing.assert_allclose(p[:3, 1], regular[:3] if mode != "off" else 0.0)
    greedy_only = policy.probabilities(s, None)
    assert greedy_only[:3, 0].tolist() == [1.0, 1.0, 1.0]  # the target policy the gates and OPE evaluate
    chosen, prop = policy.select(s, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(prop, p[np.arange(4), chosen])


def test_probation_share_matches_draws_and_validation():
    n = 20_000
    s = _probation_scores(np.tile([0.7, 0.6, 0.69], (n, 1)), np.full((n, 3), 1e-3), [False, False, True])
    cfg = policy.ExplorationConfig(probation=("x",), probation_share=0.25, probation_margin=0.05)
    chosen, prop = policy.select(s, cfg, np.random.default_rng(3))
    assert abs(np.mean(chosen == 2) - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n) and (chosen != 1).all()
    assert set(prop.round(6)) == {0.75, 0.25}
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="probation_share=0"):
        policy.ExplorationConfig(probation=("x",), probation_share=0.0)
    with pytest.raises(ValidationError, match="exceed 1"):
        policy.ExplorationConfig(mode="softmax", max_share=0.9, probation=("x",), probation_share=0.3)
    assert policy.probation_mask(("a", "x"), cfg).tolist() == [False, True]
    assert policy.probation_mask(("a", "x"), policy.ExplorationConfig()) is None
