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
