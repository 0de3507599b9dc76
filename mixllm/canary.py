"""The canary's verdict: is the challenger better than the champion on the live feedback of the sessions each
served? Promote, roll back, or extend (with a maximum duration).

The service routes a stable share of sessions with the registry's ``challenger`` (`ServingSettings.canary_share`);
every decision is logged with the deciding router's version, and feedback labels it. Per arm, the labelled
decisions since the canary started give utility = quality - cost / willingness_to_pay (the router's own objective),
clipped to [`utility_floor`, 1] so that one hostile cost report cannot decide the test.

The test is a mixture sequential probability ratio test (mSPRT, Johari et al. 2017) on the difference of the arms'
mean utilities: with d ~ N(theta, V) (V = s1^2/n1 + s2^2/n2) and a N(0, tau^2) mixture over theta,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

is a likelihood ratio against theta = 0 whose crossing of 1/alpha keeps the error rate at alpha however often it is
checked (an always-valid test: the flow may look every few minutes). Crossing with d > 0 promotes (level `alpha`),
with d < 0 rolls back (level `rollback_alpha`, 0.2, looser: a worse challenger should stop early, and a rollback
that was not needed only keeps the champion); past `max_hours`
undecided, the canary expires (the challenger stops serving, the champion stays). Each arm needs `min_labels`
labelled decisions first.

The always-valid test pays for looking often: on a few dozen labels it cannot tell even a 15-point gap, so a worse
challenger could serve several percent of a day's traffic before it is rolled back (bench/canary.py). Hence an
**exposure budget**: the challenger may serve at most `exposure_budget` of a day's requests (2%) before it is shown
not to be worse. At the last check before its requests (served so far + what it may serve until the next check, at
twice its average rate) would pass the budget, or once it has served `budget_look_share` (80%) of it (a session
stays on one arm, so its traffic comes in bursts that the average rate misses), one non-inferiority look decides:
a one-sided z-test of H0: difference <= -`budget_margin` at level `budget_alpha`. Rejected: the challenger is *cleared* (tag
`canary_cleared_at`) and the canary goes on to promotion or expiry as before. Not rejected (or too few labels to
test): roll back. One look, so a challenger worse by the margin or more keeps serving past the budget with
probability at most `budget_alpha`; the looks of the mSPRT before it only stop earlier. The budget is a share of the
day's traffic because the harm of a bad router is the share of users it served, whatever the canary share. The flow (`mixllm_flows.canary`) applies the verdict and tags the challenger's version
with the evidence; nothing here is on the request path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mixllm.exceptions import RegistryError

Verdict = Literal["promote", "rollback", "extend", "expire", "idle"]
STARTED_TAG = "canary_started_at"
CLEARED_TAG = "canary_cleared_at"  # shown not worse at the exposure budget: the service may raise the share


class CanaryConfig(BaseModel):
    """How the canary decides (see the module docstring for the test)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.025, gt=0, lt=1, description="error rate of a promotion (always valid in theory; the "
                         "plug-in variance makes it anti-conservative on few labels: 0.05 promoted 8 of 100 equal "
                         "challengers in bench/canary.py, 0.025 promotes 5)")
    rollback_alpha: float = Field(0.20, gt=0, lt=1, description="error rate of a rollback (looser: stop early; "
                                  "a false rollback only keeps the champion; bench/canary.py)")
    tau: float = Field(0.1, gt=0, description="sd of the mixture over the utility difference (the effect size "
                       "the test is most sensitive to)")
    min_labels: int = Field(30, ge=2, description="labelled decisions each arm needs before any verdict")
    max_hours: float = Field(72.0, gt=0, description="undecided this long after the start: expire")
    willingness_to_pay: float | None = Field(None, gt=0, description="utility's operating point (None: "
                                             "Settings.default_willingness_to_pay)")
    utility_floor: float = Field(-1.0, lt=0, description="utilities are clipped to [floor, 1]")
    exposure_budget: float | None = Field(0.02, gt=0, le=1, description="most a challenger not yet shown not "
                                          "worse may serve, as a share of a day's requests (None: no budget)")
    budget_margin: float = Field(0.05, ge=0, description="non-inferiority margin of the budget look (utility)")
    budget_alpha: float = Field(0.20, gt=0, lt=1, description="chance that a challenger worse by the margin is "
                                "cleared at the budget look")
    check_minutes: float = Field(15.0, gt=0, description="period of the checks (the deployment's schedule): the "
                                 "budget look comes one check before the budget would be passed")
    budget_look_share: float = Field(0.8, gt=0, le=1, description="look at the latest once this share of the "
                                     "budget is served: a session stays on one arm, so one long session can pass "
                                     "the budget between two checks whatever the average rate (bench/loop_canary.py "
                                     "closed loop: 35 then 42 of 42 in two checks at 2x the rate's projection)")


@dataclass(frozen=True)
class ArmStats:
    n: int
    mean: float
    sd: float

    @classmethod
    def of(cls, u: np.ndarray) -> "ArmStats":
        n = len(u)
        return cls(n, float(np.mean(u)) if n else math.nan, float(np.std(u, ddof=1)) if n > 1 else math.nan)


@dataclass(frozen=True)
class CanaryDecision:
    """A verdict with its evidence (what the version tag and the MLflow run keep)."""

    verdict: Verdict
    reason: str
    champion: ArmStats
    challenger: ArmStats
    difference: float = math.nan  # challenger - champion mean utility
    std_error: float = math.nan
    likelihood_ratio: float = math.nan
    elapsed_hours: float = 0.0
    champion_version: str | None = None
    challenger_version: str | None = None
    served: int = 0  # the challenger's requests since the canary started (labelled or not)
    budget: float = math.inf  # exposure budget in requests (exposure_budget x a day's requests)
    cleared: bool = False  # shown not worse at the budget look (now or at an earlier check)

    def evidence(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        return {"canary/champion_n": self.champion.n, "canary/challenger_n": self.challenger.n,
                "canary/champion_utility": self.champion.mean, "canary/challenger_utility": self.challenger.mean,
                "canary/difference": self.difference, "canary/std_error": self.std_error,
                "canary/likelihood_ratio": self.likelihood_ratio, "canary/elapsed_hours": self.elapsed_hours,
                "canary/served": self.served,
                "canary/budget": self.budget if math.isfinite(self.budget) else -1.0, "canary/cleared": float(self.cleared)}


def msprt(champion: np.ndarray, challenger: np.ndarray, tau: float) -> tuple[float, float, float]:
    """(difference of means challenger - champion, its standard error, the mixture likelihood ratio)."""
    diff = float(np.mean(challenger) - np.mean(champion))
    var = float(np.var(challenger, ddof=1) / len(challenger) + np.var(champion, ddof=1) / len(champion))
    var = max(var, 1e-12)  # two constant arms: any difference is decisive, none is not
    t2 = tau * tau
    log_lr = 0.5 * math.log(var / (var + t2)) + t2 * diff * diff / (2 * var * (var + t2))
    return diff, math.sqrt(var), math.exp(min(log_lr, 700.0))


def budget_look_due(served: int, elapsed_hours: float, budget: float, config: CanaryConfig) -> bool:
    """Would the challenger pass its exposure budget before the next check (at twice its average rate so far), or
    has it served `budget_look_share` of it (sessions make its traffic bursty)?"""
    if served <= 0 or not math.isfinite(budget):
        return False
    rate = served / max(elapsed_hours, config.check_minutes / 60)
    return served >= config.budget_look_share * budget or served + 2 * rate * config.check_minutes / 60 >= budget


def not_worse(champion: np.ndarray, challenger: np.ndarray, config: CanaryConfig) -> tuple[bool, str]:
    """The budget look: one-sided z-test of H0 difference <= -margin at level `budget_alpha` (one look only)."""
    if min(len(champion), len(challenger)) < 2:
        return False, f"{len(champion)} champion and {len(challenger)} challenger labels: nothing to test"
    diff = float(np.mean(challenger) - np.mean(champion))
    se = math.sqrt(max(np.var(challenger, ddof=1) / len(challenger) + np.var(champion, ddof=1) / len(champion),
                       1e-12))
    z, crit = (diff + config.budget_margin) / se, NormalDist().inv_cdf(1 - config.budget_alpha)
    verdict = "not worse" if z > crit else "not shown not worse"
    return z > crit, (f"{verdict} than the champion by {config.budget_margin:g}: difference {diff:+.4f} +- "
                      f"{se:.4f} on {len(challenger)} challenger labels (z {z:.2f} vs {crit:.2f})")


def decide(champion: np.ndarray, challenger: np.ndarray, config: CanaryConfig, elapsed_hours: float,
           served: int = 0, day_requests: float = math.inf, cleared: bool = False) -> CanaryDecision:
    """The verdict on the arms' utilities so far (see the module docstring). `served`: the challenger's requests
    since the start; `day_requests`: a day's requests (both arms); `cleared`: passed an earlier budget look."""
    champion, challenger = np.asarray(champion, float), np.asarray(challenger, float)
    arms = (ArmStats.of(champion), ArmStats.of(challenger))
    budget = config.exposure_budget * day_requests if config.exposure_budget else math.inf
    stats: dict[str, Any] = {"elapsed_hours": elapsed_hours, "served": served, "budget": budget,
                             "cleared": cleared}
    enough = min(len(champion), len(challenger)) >= config.min_labels
    if enough:
        diff, se, lr = msprt(champion, challenger, config.tau)
        stats.update(difference=diff, std_error=se, likelihood_ratio=lr)
        if diff > 0 and lr >= 1 / config.alpha:
            return CanaryDecision("promote", f"challenger better by {diff:+.4f} utility (likelihood ratio {lr:.3g} "
                                  f">= 1/alpha = {1 / config.alpha:.3g})", *arms, **stats)
        if diff < 0 and lr >= 1 / config.rollback_alpha:
            return CanaryDecision("rollback", f"challenger worse by {diff:+.4f} utility (likelihood ratio {lr:.3g} "
                                  f">= 1/rollback_alpha = {1 / config.rollback_alpha:.3g})", *arms, **stats)
    if not cleared and budget_look_due(served, elapsed_hours, budget, config):
        ok, why = not_worse(champion, challenger, config)
        if not ok:
            return CanaryDecision("rollback", f"exposure budget: {served} requests served of {budget:.0f} allowed "
                                  f"before being shown not worse; {why}", *arms, **stats)
        stats["cleared"] = True
    return _undecided(arms, config, enough, stats)


def _undecided(arms: tuple[ArmStats, ArmStats], config: CanaryConfig, enough: bool,
               stats: dict[str, Any]) -> CanaryDecision:
    """Extend, or expire past `max_hours`: no verdict yet."""
    hours = stats["elapsed_hours"]
    expired = hours >= config.max_hours
    if not enough:
        why = (f"{arms[0].n} champion and {arms[1].n} challenger labelled decisions; each arm needs "
               f"{config.min_labels}" + (" and the canary ran out of time" if expired else ""))
    elif expired:
        why = (f"undecided after {hours:.1f} h (max {config.max_hours:g} h): difference {stats['difference']:+.4f}, "
               f"likelihood ratio {stats['likelihood_ratio']:.3g}")
    else:
        why = (f"undecided: difference {stats['difference']:+.4f} +- {stats['std_error']:.4f}, likelihood ratio "
               f"{stats['likelihood_ratio']:.3g}")
    if stats["cleared"]:
        why += f"; cleared at the exposure budget ({stats['served']} of {stats['budget']:.0f} requests)"
    return CanaryDecision("expire" if expired else "extend", why, *arms, **stats)


# ------------------------------------------------------------------------------------------- live feedback --
def arm_utilities(logs: pd.DataFrame, feedback: pd.DataFrame, versions: dict[str, str], wtp: float,
                  since: datetime | None = None, floor: float = -1.0) -> dict[str, np.ndarray]:
    """Utility of each labelled decision per arm ({arm: router_version} -> {arm: utilities}), since `since`.

    Decisions are labelled as the nightly labels them (`mixllm.feedback.label_decisions`: an observed quality wins
    over ratings). A decision without an observed cost is charged its model's mean observed cost in this window
    (0 when no cost of that model was reported): ratings alone carry no cost."""
    from mixllm.feedback import label_decisions
    from mixllm.ope import logged_decisions

    out = {arm: np.zeros(0) for arm in versions}
    if logs.empty:
        return out
    d = logged_decisions(label_decisions(logs, feedback).rows)
    if d.empty:
        return out
    d = d[d["quality"].notna() & d["router_version"].isin(list(versions.values()))]
    if since is not None:
        d = d[pd.to_datetime(d["ts"], utc=True) >= pd.Timestamp(since)]
    cost = d["cost_usd"].fillna(d.groupby("model")["cost_usd"].transform("mean")).fillna(0.0)
    u = np.clip(d["quality"].to_numpy(float) - cost.to_numpy(float) / wtp, floor, 1.0)
    for arm, version in versions.items():
        out[arm] = u[(d["router_version"] == version).to_numpy()]
    return out


def _router_version(registry: Any, version: str) -> str:
    """The router stamp (manifest `router_version`, what the log records) of a registry version, from the small
    manifest its training run logged (the router directory only when the run has none)."""
    import mlflow

    mv = registry.client.get_model_version(registry.name, version)
    try:
        path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="router_manifest/manifest.json")
        with open(path, encoding="utf-8") as fh:
            return str(json.load(fh)["router_version"])
    except Exception:  # noqa: BLE001 - no small manifest (older run): read the router directory's
        with open(registry.router_dir(version) / "manifest.json", encoding="utf-8") as fh:
            return str(json.load(fh)["router_version"])


def started_at(registry: Any, version: str, now: datetime) -> datetime:
    """When the canary of `version` started: its tag, else (first check) its registration, written to the tag.

    Not the first check's time: the service routes the canary share to a new challenger from its next alias poll
    (seconds after registration), while the scheduled check may come up to 15 minutes later; feedback on the
    decisions in between would be left out (seen on the infra servers: a check right after the traffic counted 0
    labels)."""
    mv = registry.client.get_model_version(registry.name, version)
    if STARTED_TAG in mv.tags:
        ts = datetime.fromisoformat(mv.tags[STARTED_TAG])
        return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    created = mv.creation_timestamp
    start = min(now, datetime.fromtimestamp(created / 1000, tz=timezone.utc)) if created else now
    registry.set_tags(version, {STARTED_TAG: start.isoformat(timespec="seconds")})
    return start


def traffic(logs: pd.DataFrame, version: str, start: datetime, now: datetime,
            check_minutes: float = 15.0) -> tuple[int, float]:
    """(requests `version` decided since `start`, a day's requests) from the log rows of the last 24 h or more.

    A day's requests are the decisions of the last 24 h, scaled up to 24 h when the log is younger than that (a
    service started an hour ago at 400 requests an hour has a 9,600-request day)."""
    d = logs[logs["propensity"].notna()].drop_duplicates(["query_id", "model"])
    if d.empty:
        return 0, 0.0
    ts = pd.to_datetime(d["ts"], utc=True)
    served = int(((d["router_version"] == version) & (ts >= pd.Timestamp(start))).sum())
    day_start = pd.Timestamp(now) - pd.Timedelta(hours=24)
    recent = ts[ts >= day_start]
    if recent.empty:
        return served, 0.0
    hours = (pd.Timestamp(now) - max(recent.min(), day_start)).total_seconds() / 3600
    return served, len(recent) * 24 / max(hours, check_minutes / 60)


def evaluate(registry: Any, store: Any, config: CanaryConfig, wtp: float, now: datetime | None = None) -> \
        CanaryDecision:
    """Read the aliases, the store's decisions of the last day and feedback since the canary started; the verdict
    (not applied)."""
    from mixllm.registry import CHALLENGER, CHAMPION

    now = now or datetime.now(timezone.utc)
    champ, chal = registry.version_for(CHAMPION), registry.version_for(CHALLENGER)
    empty = ArmStats(0, math.nan, math.nan)
    if chal is None or champ is None or chal == champ:
        why = "no challenger alias" if chal is None else "no champion alias" if champ is None else \
            "the challenger is the champion"
        return CanaryDecision("idle", why, empty, empty, champion_version=champ, challenger_version=chal)
    start = started_at(registry, chal, now)
    cleared = CLEARED_TAG in registry.client.get_model_version(registry.name, chal).tags
    versions = {"champion": _router_version(registry, champ), "challenger": _router_version(registry, chal)}
    logs = store.logs(since=min(start, now - timedelta(hours=24)), policy_only=False)
    served, day = traffic(logs, versions["challenger"], start, now, config.check_minutes)
    u = arm_utilities(logs, store.feedback(since=start), versions, config.willingness_to_pay or wtp, start,
                      config.utility_floor)
    out = decide(u["champion"], u["challenger"], config, (now - start).total_seconds() / 3600, served, day, cleared)
    return replace(out, champion_version=champ, challenger_version=chal)


def apply(registry: Any, decision: CanaryDecision, who: str = "canary") -> None:
    """Record the verdict on the challenger's version (tags with the evidence); promote it, or stop its canary
    (remove the `challenger` alias: the service stops routing to it) on rollback or expiry."""
    from mlflow.exceptions import MlflowException

    from mixllm.registry import CHALLENGER

    version = decision.challenger_version
    if decision.verdict == "idle" or version is None:
        return
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {"canary_last_check": now, "canary_verdict": decision.verdict, "canary_reason": decision.reason,
            "canary_evidence": json.dumps(decision.evidence(), default=str)}
    if decision.cleared and CLEARED_TAG not in registry.client.get_model_version(registry.name, version).tags:
        tags[CLEARED_TAG] = now
    registry.set_tags(version, tags)
    if decision.verdict == "promote":
        registry.promote(version, reason=f"canary: {decision.reason}", who=who)
    elif decision.verdict in ("rollback", "expire"):
        try:
            registry.client.delete_registered_model_alias(registry.name, CHALLENGER)
        except MlflowException as e:
            raise RegistryError(f"cannot remove the challenger alias from version {version}: {e}") from e
        registry.set_tags(version, {"canary_stopped_at": now, "canary_stopped_by": who})
