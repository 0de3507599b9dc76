"""Holding a daily spend target online, and per-tenant hard caps.

`SpendController`: `mixllm calibrate` picks one willingness to pay for a spend target on yesterday's traffic; today's
traffic is not yesterday's, so the service corrects it as the day's observed spend comes in (pass-through usage and
`cost_usd` sent to /feedback). Every `interval_seconds` it compares the recent spend rate with the rate that would
land exactly on the target by midnight UTC (what is left of the budget over the time left) and moves the
willingness to pay by that ratio raised to `gain` (a damped multiplicative step, at most x2 or /2 per step), never
past `[wtp_min, wtp_max]`. Higher willingness to pay buys dearer models, so spending too fast lowers it. Only
requests without their own `willingness_to_pay` use it. Without observed spend in a step it holds (no signal is
not a reason to move).

`TenantBudgets`: a hard daily cap per API key or tenant (the request's tenant header); past it a request is refused
with 429 until midnight UTC. Spend is charged to the tenant whose request it was (the decision's request id).
Both keep their state in memory: a restart starts the day's counters again from zero.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

DAY = 86400.0


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")


def _seconds_left(now: float) -> float:
    return DAY - (now % DAY)


BOUNDS_FACTOR = 100.0


def spend_bounds(start_wtp: float, wtp_min: float | None = None,
                 wtp_max: float | None = None) -> tuple[float, float]:
    """The controller's willingness-to-pay bounds: the configured ones, else the starting value / and x
    BOUNDS_FACTOR. Why relative: prices set the scale (on RouterBench 10% of GPT-4's spend needs about 0.06, where
    fixed bounds of 0.1-10,000 could not go), and starting at `mixllm calibrate`'s value with these bounds held
    realised spend within 10% on every feasible simulated day where the target binds (`bench/ops.py`)."""
    lo = wtp_min if wtp_min is not None else start_wtp / BOUNDS_FACTOR
    hi = wtp_max if wtp_max is not None else start_wtp * BOUNDS_FACTOR
    if lo > hi:
        raise ValueError(f"spend_wtp_min {lo} > spend_wtp_max {hi}")
    return lo, hi


class SpendController:
    """The willingness to pay that holds `target_usd` per UTC day (see module docstring). Thread-safe."""

    def __init__(self, target_usd: float, wtp: float, wtp_min: float, wtp_max: float, gain: float = 0.5,
                 interval_seconds: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        if not (target_usd > 0 and 0 < wtp_min <= wtp <= wtp_max and 0 < gain <= 1 and interval_seconds > 0):
            raise ValueError(f"spend controller needs target > 0, 0 < wtp_min <= wtp <= wtp_max and 0 < gain <= 1 "
                             f"(got target {target_usd}, wtp {wtp} in [{wtp_min}, {wtp_max}], gain {gain})")
        self.target, self.wtp_min, self.wtp_max, self.gain = target_usd, wtp_min, wtp_max, gain
        self.interval, self._clock = interval_seconds, clock
        self._wtp, self._lock = wtp, threading.Lock()
        now = clock()
        self._day, self.spent, self._window, self._window_start = _day(now), 0.0, 0.0, now
        self.steps = 0

    def observe(self, cost_usd: float | None) -> None:
        """Count an observed cost (negative, NaN or infinite values are ignored: they are not spend)."""
        if cost_usd is None or not math.isfinite(cost_usd) or cost_usd < 0:
            return
        with self._lock:
            self._roll(self._clock())
            self.spent += cost_usd
            self._window += cost_usd

    def willingness_to_pay(self) -> float:
        with self._lock:
            now = self._clock()
            self._roll(now)
            if now - self._window_start >= self.interval:
                self._step(now)
            return self._wtp

    def _roll(self, now: float) -> None:
        day = _day(now)
        if day != self._day:  # a new day: a new budget (the willingness to pay carries over)
            self._day, self.spent, self._window, self._window_start = day, 0.0, 0.0, now

    def _step(self, now: float) -> None:
        elapsed = now - self._window_start
        if self._window > 0:
            rate = self._window / elapsed
            needed = max(self.target - self.spent, 0.0) / max(_seconds_left(now), self.interval)
            ratio = min(max(needed / rate, 0.5), 2.0)
            self._wtp = min(max(self._wtp * ratio ** self.gain, self.wtp_min), self.wtp_max)
            self.steps += 1
        self._window, self._window_start = 0.0, now

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            self._roll(now)
            pace = self.target * (1 - _seconds_left(now) / DAY)
            return {"target_usd": self.target, "spent_today_usd": round(self.spent, 6),
                    "on_pace_usd": round(pace, 6), "willingness_to_pay": self._wtp,
                    "bounds": [self.wtp_min, self.wtp_max], "steps": self.steps}


class TenantBudgets:
    """Daily hard caps per tenant, and which tenant each recent request belongs to (bounded memory)."""

    def __init__(self, caps: dict[str, float], default_cap: float | None = None, max_requests: int = 200_000,
                 clock: Callable[[], float] = time.time) -> None:
        bad = {k: v for k, v in caps.items() if not (v >= 0 and math.isfinite(v))}
        if bad or (default_cap is not None and not default_cap >= 0):
            raise ValueError(f"tenant caps must be finite and >= 0 USD per day, got {bad or default_cap}")
        self.caps, self.default_cap, self.max_requests, self._clock = dict(caps), default_cap, max_requests, clock
        self._spent: dict[str, float] = {}
        self._owner: OrderedDict[str, str] = OrderedDict()
        self._day = _day(clock())
        self._lock = threading.Lock()

    def cap(self, tenant: str) -> float | None:
        return self.caps.get(tenant, self.default_cap)

    def over(self, tenant: str) -> str | None:
        """Why `tenant` may not route now (None: it may)."""
        cap = self.cap(tenant)
        if cap is None:
            return None
        with self._lock:
            self._roll()
            spent = self._spent.get(tenant, 0.0)
        if spent >= cap:
            return (f"tenant {tenant!r} spent {spent:.4f} USD today, its daily cap is {cap:g} USD; "
                    "requests are refused until 00:00 UTC")
        return None

    def assign(self, request_id: str, tenant: str) -> None:
        with self._lock:
            self._owner[request_id] = tenant
            while len(self._owner) > self.max_requests:
                self._owner.popitem(last=False)

    def charge(self, request_id: str, cost_usd: float | None) -> str | None:
        """Charge a request's observed cost to its tenant; returns the tenant (None: unknown request)."""
        if cost_usd is None or not math.isfinite(cost_usd) or cost_usd < 0:
            return None
        with self._lock:
            self._roll()
            tenant = self._owner.get(request_id)
            if tenant is not None:
                self._spent[tenant] = self._spent.get(tenant, 0.0) + cost_usd
        return tenant

    def _roll(self) -> None:
        day = _day(self._clock())
        if day != self._day:
            self._day, self._spent = day, {}

    def status(self) -> dict[str, Any]:
        with self._lock:
            self._roll()
            return {tenant_label(t): {"spent_today_usd": round(s, 6), "cap_usd": self.cap(t)}
                    for t, s in self._spent.items()}


def tenant_label(tenant: str) -> str:
    """How a tenant is shown in /readyz and logs: a digest, since the header may carry an API key."""
    import hashlib

    return "tenant-" + hashlib.sha256(tenant.encode()).hexdigest()[:12] if tenant else "(no tenant header)"
