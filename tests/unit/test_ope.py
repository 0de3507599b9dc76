"""Off-policy estimators (mixllm.ope) against brute force on a small synthetic world whose true values are known
exactly: 3 contexts, 3 models, Bernoulli rewards, a stochastic logging policy and two target policies."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mixllm.exceptions import ContractError
from mixllm.ope import TargetPolicy, estimate, estimate_difference, kish_ess

pytestmark = pytest.mark.unit

P_X = np.array([0.5, 0.3, 0.2])                       # context distribution
MEAN = np.array([[0.9, 0.6, 0.2], [0.3, 0.8, 0.5], [0.1, 0.4, 0.7]])  # E[r | x, a]
MU = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.25, 0.25, 0.5]])  # logging policy
PI = np.array([[0.1, 0.9, 0.0], [0.0, 0.2, 0.8], [0.5, 0.0, 0.5]])    # target (zeros: never chosen)
GREEDY = np.eye(3)[MEAN.argmax(axis=1)]                                  # the best model per context
RHAT = np.array([[0.5, 0.5, 0.5], [0.7, 0.1, 0.9], [0.2, 0.6, 0.3]])   # a deliberately poor reward model


def truth(pi: np.ndarray) -> float:
    return float((P_X[:, None] * pi * MEAN).sum())


def target(pi: np.ndarray, x: np.ndarray, a: np.ndarray) -> TargetPolicy:
    return TargetPolicy(pi[x], a, RHAT[x])


def simulate(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = rng.choice(3, n, p=P_X)
    a = (rng.random(n)[:, None] > MU[x].cumsum(axis=1)).sum(axis=1)
    r = (rng.random(n) < MEAN[x, a]).astype(float)
    return x, a, MU[x, a], r


def test_each_estimator_equals_its_formula_written_out_on_a_small_log() -> None:
    x, a, r = np.array([0, 1, 2, 0, 1]), np.array([1, 2, 0, 0, 1]), np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    mu = MU[x, a]
    w = [PI[x[i], a[i]] / mu[i] for i in range(5)]
    ips = sum(w[i] * r[i] for i in range(5)) / 5
    snips = sum(w[i] * r[i] for i in range(5)) / sum(w)
    dr = sum(sum(PI[x[i], k] * RHAT[x[i], k] for k in range(3)) + w[i] * (r[i] - RHAT[x[i], a[i]])
             for i in range(5)) / 5
    t = target(PI, x, a)
    for name, expected in (("ips", ips), ("snips", snips), ("dr", dr)):
        assert estimate(mu, r, t, name).value == pytest.approx(expected, abs=1e-12)
    assert estimate(mu, r, t, "ips").ess == pytest.approx(sum(w) ** 2 / sum(v * v for v in w))


@pytest.mark.parametrize("pi", [PI, GREEDY], ids=["stochastic", "greedy"])
def test_ips_and_dr_are_exactly_unbiased_by_enumeration(pi: np.ndarray) -> None:
    """E over every one-decision log (x, a, r), weighted by its probability, equals the true value exactly."""
    expected = {"ips": 0.0, "dr": 0.0}
    for xi, ai, ri in itertools.product(range(3), range(3), (0.0, 1.0)):
        prob = P_X[xi] * MU[xi, ai] * (MEAN[xi, ai] if ri else 1 - MEAN[xi, ai])
        t = target(pi, np.array([xi]), np.array([ai]))
        for name in expected:
            expected[name] += prob * estimate(np.array([MU[xi, ai]]), np.array([ri]), t, name).value
    assert expected["ips"] == pytest.approx(truth(pi), abs=1e-12)
    assert expected["dr"] == pytest.approx(truth(pi), abs=1e-12)


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_large_sample_estimate_is_within_its_own_interval_of_the_truth(name: str) -> None:
    rng = np.random.default_rng(1)
    x, a, mu, r = simulate(200_000, rng)
    est = estimate(mu, r, target(PI, x, a), name)
    half = (est.high - est.low) / 2
    assert half < 0.01  # the interval is informative at this size
    assert abs(est.value - truth(PI)) <= 1.5 * half  # 1.5 x the 95% half-width: ~3 standard errors


@pytest.mark.parametrize("name,ci,reps,floor", [("ips", "clt", 300, 0.91), ("snips", "clt", 300, 0.91),
                                                ("dr", "clt", 300, 0.91), ("snips", "bootstrap", 120, 0.88),
                                                ("dr", "bootstrap", 120, 0.88)])
def test_confidence_intervals_cover_the_truth_at_their_level(name: str, ci: str, reps: int, floor: float) -> None:
    """Coverage of the 95% interval over independent logs of 400 decisions: below `floor` would happen by chance
    with probability < 0.1% if the coverage really were 95%."""
    rng = np.random.default_rng(2)
    hits = 0
    for k in range(reps):
        x, a, mu, r = simulate(400, rng)
        est = estimate(mu, r, target(PI, x, a), name, ci=ci, n_boot=300, seed=k)
        hits += est.low <= truth(PI) <= est.high
    assert floor <= hits / reps <= 0.995, hits / reps


def test_paired_difference_and_its_interval() -> None:
    rng = np.random.default_rng(3)
    x, a, mu, r = simulate(50_000, rng)
    ta, tb = target(PI, x, a), target(GREEDY, x, a)
    for name in ("ips", "snips", "dr"):
        d = estimate_difference(mu, r, ta, tb, name)
        assert d.value == pytest.approx(estimate(mu, r, ta, name).value - estimate(mu, r, tb, name).value)
        assert d.low <= truth(PI) - truth(GREEDY) <= d.high
        same = estimate_difference(mu, r, ta, ta, name)
        assert same.value == 0.0 and same.low == same.high == 0.0


def test_ess_clipping_and_support() -> None:
    assert kish_ess(np.ones(10)) == pytest.approx(10.0)
    assert kish_ess(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert kish_ess(np.zeros(3)) == 0.0
    x, a = np.array([0, 0]), np.array([1, 2])
    mu, r = MU[x, a], np.array([1.0, 1.0])
    t = target(PI, x, a)
    assert t.weights(mu).tolist() == pytest.approx([0.9 / 0.3, 0.0])  # the target never picks model 2 in context 0
    assert t.weights(mu, clip=2.0).max() == 2.0
    unknown = TargetPolicy(PI[x], np.array([1, -1]), RHAT[x])  # a logged model the target does not know
    assert unknown.weights(mu)[1] == 0.0
    nobody = estimate(mu, r, TargetPolicy(PI[x], np.array([2, 2]), RHAT[x]), "snips")
    assert math.isnan(nobody.value) and nobody.ess == 0.0


def test_bad_inputs_are_refused() -> None:
    x, a = np.array([0, 1]), np.array([0, 1])
    t = target(PI, x, a)
    with pytest.raises(ContractError, match="propensities"):
        estimate(np.array([0.0, 0.5]), np.array([1.0, 0.0]), t)
    with pytest.raises(ContractError, match="reward model"):
        estimate(MU[x, a], np.array([1.0, 0.0]), TargetPolicy(PI[x], a), "dr")
    with pytest.raises(ContractError, match="number of decisions"):
        estimate(MU[x, a], np.array([1.0]), t)
    with pytest.raises(ContractError, match="finite"):
        estimate(MU[x, a], np.array([1.0, np.nan]), t)
    with pytest.raises(ContractError, match="unknown estimator"):
        estimate(MU[x, a], np.array([1.0, 0.0]), t, "magic")  # type: ignore[arg-type]


def test_no_estimate_below_the_minimum_effective_sample_size() -> None:
    """A target that agrees with 3 of 400 logged choices (ESS 3): below min_ess there is no value and no interval
    (DR would be the reward model's mean with a tight interval that says nothing about its error); above it, the
    same numbers as without the threshold. Metrics then carry only the ESS, so a gate cannot read a value."""
    rng = np.random.default_rng(3)
    x, _, _, _ = simulate(400, rng)
    a = np.where(np.arange(400) < 3, 2, 0)  # the logger chose model 2 three times, model 0 otherwise
    mu, r = np.full(400, 0.5), (rng.random(400) < MEAN[x, a]).astype(float)
    t = TargetPolicy(np.tile([0.0, 0.0, 1.0], (400, 1)), a, RHAT[x])
    full = estimate(mu, r, t, "dr")
    assert full.ess == pytest.approx(3.0) and math.isfinite(full.value)
    none = estimate(mu, r, t, "dr", min_ess=10)
    assert not none.available and math.isnan(none.low) and math.isnan(none.high)
    assert none.ess == pytest.approx(3.0) and none.n == 400
    assert set(none.metrics("ope/champion")) == {"ope/champion/ess"}
    ok = TargetPolicy(np.tile([1.0, 0.0, 0.0], (400, 1)), a, RHAT[x])
    assert estimate(mu, r, ok, "dr", min_ess=10) == estimate(mu, r, ok, "dr")
    assert not estimate_difference(mu, r, ok, t, "dr", min_ess=10).available
    assert estimate_difference(mu, r, ok, ok, "dr", min_ess=10).available
