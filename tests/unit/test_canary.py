"""The canary's sequential test on generated feedback: promote a better challenger, roll back a worse one, extend
while undecided, expire at the maximum duration, and keep its error rate however often it looks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from mixllm.canary import CanaryConfig, arm_utilities, decide, traffic
from mixllm.schemas import FEEDBACK_COLUMNS, LOG_COLUMNS

pytestmark = pytest.mark.unit
CFG = CanaryConfig(min_labels=30, max_hours=72)


def _arm(rng: np.random.Generator, quality: float, n: int) -> np.ndarray:
    """Utilities of thumbs-labelled decisions (quality 0/1 at rate `quality`) minus a small cost term."""
    return (rng.random(n) < quality).astype(float) - rng.uniform(0.0, 0.05, n)


def test_a_better_challenger_is_promoted_and_a_worse_one_rolled_back():
    rng = np.random.default_rng(0)
    champion = _arm(rng, 0.70, 600)
    better = decide(champion, _arm(rng, 0.82, 300), CFG, elapsed_hours=5)
    assert better.verdict == "promote" and better.difference > 0 and better.likelihood_ratio >= 1 / CFG.alpha
    worse = decide(champion, _arm(rng, 0.45, 200), CFG, elapsed_hours=2)
    assert worse.verdict == "rollback" and worse.difference < 0
    assert "worse" in worse.reason and worse.evidence()["challenger"]["n"] == 200


def test_equal_arms_are_extended_then_expire_and_too_few_labels_never_decide():
    rng = np.random.default_rng(1)
    a, b = _arm(rng, 0.7, 400), _arm(rng, 0.7, 400)
    assert decide(a, b, CFG, elapsed_hours=10).verdict == "extend"
    expired = decide(a, b, CFG, elapsed_hours=72)
    assert expired.verdict == "expire" and "undecided" in expired.reason
    few = decide(_arm(rng, 0.2, 500), _arm(rng, 1.0, 10), CFG, elapsed_hours=1)  # huge gap, 10 labels
    assert few.verdict == "extend" and "needs 30" in few.reason
    assert decide(np.array([]), np.array([]), CFG, elapsed_hours=100).verdict == "expire"


def test_looking_every_50_labels_keeps_the_false_promotion_rate_below_alpha():
    """Always valid: 200 canaries of two equal arms, checked after every 50 labels per arm up to 2,000."""
    rng = np.random.default_rng(2)
    promoted = 0
    for _ in range(200):
        a, b = _arm(rng, 0.7, 2000), _arm(rng, 0.7, 2000)
        verdicts = (decide(a[:n], b[:n], CFG, 1).verdict for n in range(50, 2001, 50))
        promoted += any(v == "promote" for v in verdicts)
    assert promoted / 200 <= CFG.alpha


def _log(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in LOG_COLUMNS:
        if c not in df:
            df[c] = None
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    for c in ("quality", "cost_usd", "propensity"):
        df[c] = df[c].astype(float)
    return df[list(LOG_COLUMNS)]


def test_arm_utilities_label_decisions_per_router_and_clip_a_hostile_cost():
    t0 = datetime(2026, 12, 3, 8, tzinfo=timezone.utc)
    rows, feedback = [], []
    for i in range(6):
        version = "v-champ" if i % 2 == 0 else "v-chal"
        qid, ts = f"q{i}", t0 + timedelta(minutes=i)
        rows.append({"query_id": qid, "prompt": f"p{i}", "model": "m", "ts": ts, "router_version": version,
                     "propensity": 1.0})
        if i < 4:  # observed quality and cost
            rows.append({"query_id": qid, "prompt": f"p{i}", "model": "m", "ts": ts, "router_version": version,
                         "propensity": 1.0, "quality": 0.8, "cost_usd": 1e12 if i == 3 else 0.01})
        else:  # a thumbs-up only
            feedback.append({"query_id": qid, "model": "m", "rating": 1.0, "ts": ts, "source": "api"})
    rows.append({"query_id": "old", "prompt": "p", "model": "m", "ts": t0 - timedelta(days=1),
                 "router_version": "v-chal", "propensity": 1.0, "quality": 0.0, "cost_usd": 0.0})
    u = arm_utilities(_log(rows), pd.DataFrame(feedback, columns=list(FEEDBACK_COLUMNS)),
                      {"champion": "v-champ", "challenger": "v-chal"}, wtp=100.0, since=t0, floor=-1.0)
    assert len(u["champion"]) == 3 and len(u["challenger"]) == 3  # the row before the start is not counted
    assert u["challenger"].min() == -1.0  # 0.8 - 1e12/100 clipped to the floor
    assert np.isclose(u["champion"][0], 0.8 - 0.01 / 100)
    assert u["champion"][-1] <= 1.0  # rating-only: charged the model's mean observed cost


BUDGET = CanaryConfig(min_labels=30, exposure_budget=0.02, budget_margin=0.05, budget_alpha=0.2, check_minutes=15)


def test_the_exposure_budget_rolls_back_a_challenger_not_shown_not_worse_and_clears_a_good_one():
    """A day of 10,000 requests: 200 may go to a challenger not yet shown not worse. 8 h at 24 requests an hour
    (192 served) puts the next check past it: the one look happens now."""
    rng = np.random.default_rng(3)
    champion = _arm(rng, 0.75, 2000)
    slightly_worse = _arm(rng, 0.68, 58)  # no mSPRT verdict on 58 labels, but not shown within 0.05 either
    early = decide(champion, slightly_worse, BUDGET, elapsed_hours=4, served=96, day_requests=10_000)
    assert early.verdict == "extend" and not early.cleared and early.budget == 200  # 96 + 2 x 6 < 200: no look
    look = decide(champion, slightly_worse, BUDGET, elapsed_hours=8, served=192, day_requests=10_000)
    assert look.verdict == "rollback" and "exposure budget" in look.reason and "not shown not worse" in look.reason
    good = decide(champion, _arm(rng, 0.85, 58), BUDGET, elapsed_hours=8, served=192, day_requests=10_000)
    assert good.verdict == "extend" and good.cleared and "cleared at the exposure budget" in good.reason
    later = decide(champion, slightly_worse, BUDGET, elapsed_hours=20, served=480, day_requests=10_000, cleared=True)
    assert later.verdict == "extend" and later.cleared  # one look only: a cleared challenger is not looked at again


def test_the_budget_look_rolls_back_without_labels_and_never_fires_without_traffic_or_budget():
    rng = np.random.default_rng(4)
    few = decide(_arm(rng, 0.75, 500), _arm(rng, 0.95, 1), BUDGET, elapsed_hours=8, served=199, day_requests=10_000)
    assert few.verdict == "rollback" and "nothing to test" in few.reason  # 199 served, 1 label: cannot be cleared
    assert decide(np.array([]), np.array([]), BUDGET, elapsed_hours=1, served=0, day_requests=0).verdict == "extend"
    unbounded = CanaryConfig(min_labels=30, exposure_budget=None)
    assert decide(_arm(rng, 0.75, 500), _arm(rng, 0.95, 1), unbounded, 8, served=10**6,
                  day_requests=10_000).verdict == "extend"


def test_traffic_counts_the_challengers_decisions_and_scales_a_young_log_to_a_day():
    now = datetime(2026, 12, 3, 12, tzinfo=timezone.utc)
    start = now - timedelta(hours=1)
    rows = [{"query_id": f"q{i}", "prompt": "p", "model": "m", "ts": now - timedelta(minutes=120 - i),
             "router_version": "v-chal" if i % 4 == 0 else "v-champ", "propensity": 1.0} for i in range(120)]
    rows.append({**rows[0], "quality": 1.0})  # an observation of a decision is not a second request
    served, day = traffic(_log(rows), "v-chal", start, now)
    assert served == 15  # i = 60, 64, ..., 116: the challenger's decisions since the start
    assert day == pytest.approx(120 * 12)  # 120 requests in the 2 h the log covers


def test_the_budget_look_comes_at_a_share_of_the_budget_whatever_the_rate():
    """Sessions stay on one arm, so the challenger's requests come in bursts: at 80% of its budget the look is due
    even when twice its average rate would not reach the budget by the next check (the closed loop's 35 -> 42 of 42)."""
    rng = np.random.default_rng(5)
    champion, bad = _arm(rng, 0.75, 400), _arm(rng, 0.45, 8)
    slow = dict(elapsed_hours=8.25, day_requests=2_000)  # 4.2 requests an hour: 2 x the rate adds ~2 by next check
    before = decide(champion, bad, BUDGET, served=31, **slow)  # 31 of 40 (< 80%): 31 + 2 < 40, no look
    assert before.verdict == "extend" and before.budget == 40
    due = decide(champion, bad, BUDGET, served=32, **slow)  # 80% of 40: the look, before a session can pass it
    assert due.verdict == "rollback" and "exposure budget: 32 requests served of 40" in due.reason
    assert decide(champion, bad, BUDGET.model_copy(update={"budget_look_share": 1.0}), served=32,
                  **slow).verdict == "extend"  # the rate's projection alone would wait
