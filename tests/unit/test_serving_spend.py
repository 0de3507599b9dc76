"""The online spend controller over a simulated day (traffic that peaks at noon, cost per request rising with the
willingness to pay) and the per-tenant caps, on a simulated clock."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixllm.serving.spend import DAY, SpendController, TenantBudgets

pytestmark = pytest.mark.unit
T0 = 1_796_256_000.0  # 2026-12-03 00:00 UTC


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _day(controller: SpendController, clock: Clock, seed: int, rate_scale: float = 1.0) -> tuple[float, list]:
    """One simulated day in 10 s steps: Poisson arrivals (0.5-1.5 req/s, peak at noon), each request paying
    0.0004 * wtp**0.4 USD (+-30% noise) at the controller's willingness to pay. Returns (spend, wtp trace)."""
    rng = np.random.default_rng(seed)
    spent, trace = 0.0, []
    for step in range(int(DAY // 10)):
        clock.now = T0 + step * 10
        lam = rate_scale * (1.0 - 0.5 * math.cos(2 * math.pi * step * 10 / DAY)) * 10
        for _ in range(rng.poisson(lam)):
            wtp = controller.willingness_to_pay()
            cost = 0.0004 * wtp ** 0.4 * rng.uniform(0.7, 1.3)
            controller.observe(cost)
            spent += cost
        trace.append(controller.willingness_to_pay())
    return spent, trace


@pytest.mark.parametrize("start_wtp", [5000.0, 5.0])  # starts 4x too dear / 20x too cheap
def test_a_simulated_day_lands_within_10_percent_of_the_target(start_wtp):
    clock = Clock()
    c = SpendController(target_usd=200.0, wtp=start_wtp, wtp_min=0.01, wtp_max=1e5, clock=clock)
    spent, trace = _day(c, clock, seed=0)
    assert abs(spent / 200.0 - 1) <= 0.10, (spent, trace[::720])
    assert c.steps > 100 and all(0.01 <= w <= 1e5 for w in trace)


def test_the_bounds_hold_when_the_target_cannot_be_met_and_a_new_day_resets_the_budget():
    clock = Clock()
    c = SpendController(target_usd=1.0, wtp=100.0, wtp_min=50.0, wtp_max=200.0, clock=clock)
    spent, trace = _day(c, clock, seed=1)
    assert min(trace) == 50.0 and spent > 1.0  # held at the floor: the cap is the bound, not the target
    clock.now = T0 + DAY + 5
    c.observe(0.5)
    status = c.status()
    assert status["spent_today_usd"] == 0.5 and status["willingness_to_pay"] == 50.0
    for bad in (-1.0, float("nan"), float("inf"), None):  # hostile costs are not spend
        c.observe(bad)
    assert c.status()["spent_today_usd"] == 0.5
    with pytest.raises(ValueError, match="wtp_min <= wtp"):
        SpendController(10.0, wtp=1000.0, wtp_min=1.0, wtp_max=100.0)


def test_a_tenant_past_its_cap_is_refused_until_the_next_day():
    clock = Clock()
    budgets = TenantBudgets({"team-a": 1.0, "free": 0.0}, default_cap=None, max_requests=2, clock=clock)
    assert budgets.over("team-a") is None and budgets.over("anyone") is None
    assert "daily cap is 0" in budgets.over("free")
    budgets.assign("r1", "team-a")
    budgets.assign("r2", "team-a")
    assert budgets.charge("r1", 0.6) == "team-a" and budgets.over("team-a") is None
    budgets.charge("r2", 0.5)
    assert "spent 1.1000 USD today" in budgets.over("team-a")
    assert "team-a" not in str(budgets.status()) and len(budgets.status()) == 1  # the key is not shown
    budgets.assign("r3", "team-b")  # max_requests=2: the oldest request's owner is forgotten
    assert budgets.charge("r1", 5.0) is None and budgets.charge("r3", float("nan")) is None
    clock.now = T0 + DAY
    assert budgets.over("team-a") is None and budgets.status() == {}
    with pytest.raises(ValueError):
        TenantBudgets({"x": -1.0})


def test_bounds_default_around_the_starting_willingness_to_pay():
    """Prices set the scale: unset bounds are the start / 100 and x 100; set ones are kept; crossed ones refused."""
    from mixllm.serving.spend import spend_bounds

    assert spend_bounds(0.06) == pytest.approx((0.0006, 6.0))
    assert spend_bounds(30.0, wtp_min=1.0) == pytest.approx((1.0, 3000.0))
    with pytest.raises(ValueError, match="spend_wtp_min"):
        spend_bounds(30.0, wtp_min=10.0, wtp_max=5.0)
