"""Evaluation gates: may a freshly trained candidate replace the champion?

The gates are data, not code: a typed YAML file (packaged default ``mixllm/defaults/gates.yaml``) names the metrics
of `EvaluationReport.summary` to compare and the tolerances, and how candidate and champion are compared on logged
production traffic (off-policy estimates, `mixllm.ope`). `check_gates` returns a verdict with one line per check
and a short reason, because a gate saying "no" is an expected outcome the pipeline reports and records on the
registered version, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mixllm.exceptions import ConfigError


class Comparison(BaseModel):
    """Candidate must not fall below champion by more than `tolerance` on `metric` (higher is better)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(min_length=1)
    tolerance: float = Field(ge=0, allow_inf_nan=False)


class SliceComparison(BaseModel):
    """The same comparison on every per-task slice ``<prefix><task>/<metric>`` present in both reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = "task/"
    metric: str = "aiq"
    tolerance: float = Field(default=0.03, ge=0, allow_inf_nan=False)


class ProductionComparison(BaseModel):
    """Candidate vs champion on logged production decisions (off-policy: `mixllm.ope.production_metrics` puts
    ``ope/*`` metrics into the candidate's metrics). Applies once `min_labelled` labelled decisions exist and the
    importance weights leave at least `min_ess` effective decisions for both routers. Rule ``ci``: fail when the
    whole confidence interval of (candidate - champion) lies below -tolerance (confidently worse); ``point``: fail
    when the estimate itself does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    estimator: Literal["ips", "snips", "dr"] = "dr"
    min_labelled: int = Field(default=200, ge=1)
    min_ess: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    tolerance: float = Field(default=0.02, ge=0, allow_inf_nan=False)
    rule: Literal["ci", "point"] = "ci"


class GateConfig(BaseModel):
    """The whole gate policy (see the packaged ``defaults/gates.yaml`` for the meaning of each entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aiq: Comparison = Comparison(metric="aiq", tolerance=0.01)
    budget_quality: Comparison = Comparison(metric="default_wtp/quality", tolerance=0.01)
    task_slices: SliceComparison = SliceComparison()
    floors: dict[str, float] = Field(default_factory=dict)
    beat_baselines: tuple[str, ...] = Field(default=(), description="Baselines whose AIQ the candidate must reach.")
    baseline_metric: str = "aiq"
    production: ProductionComparison = ProductionComparison()


class GateCheck(BaseModel):
    """One comparison or floor and its outcome, with the numbers that decided it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    passed: bool
    detail: str


class GateVerdict(BaseModel):
    """The outcome: `passed`, every check, and `reason` (one line: what failed, or why it passed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    passed: bool
    checks: tuple[GateCheck, ...]
    reason: str

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)


def load_gates(path: str | Path | None = None) -> GateConfig:
    """Read a gate file (None: the packaged default) as a `GateConfig`; a bad file is a `ConfigError`."""
    try:
        if path is None:
            text = resources.files("mixllm.defaults").joinpath("gates.yaml").read_text(encoding="utf-8")
            where = "packaged defaults/gates.yaml"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
        raw = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read gate file {path}: {e}; fix the path or the YAML syntax") from e
    try:
        return GateConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid gate file {where}: {e}") from e


def _value(summary: Mapping[str, float], metric: str) -> float | None:
    v = summary.get(metric)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _compare(name: str, metric: str, tol: float, cand: Mapping[str, float],
             champ: Mapping[str, float]) -> GateCheck:
    c, b = _value(cand, metric), _value(champ, metric)
    if c is None:
        return GateCheck(name=name, passed=False, detail=f"{metric} missing from the candidate's evaluation")
    if b is None:
        return GateCheck(name=name, passed=True, detail=f"{metric}={c:.4f}; champion has no {metric} to compare")
    ok = c >= b - tol
    word = "ok" if ok else "worse than champion beyond tolerance"
    return GateCheck(name=name, passed=ok,
                     detail=f"{metric} {c:.4f} vs champion {b:.4f} (tolerance {tol:g}): {word}")


def _slice_checks(cfg: SliceComparison, cand: Mapping[str, float], champ: Mapping[str, float]) -> list[GateCheck]:
    suffix = "/" + cfg.metric
    keys = sorted(k for k in cand if k.startswith(cfg.prefix) and k.endswith(suffix) and k in champ)
    return [_compare(f"slice {k[len(cfg.prefix):-len(suffix)]}", k, cfg.tolerance, cand, champ) for k in keys]


def _floor_checks(floors: Mapping[str, float], cand: Mapping[str, float]) -> list[GateCheck]:
    checks = []
    for metric, floor in sorted(floors.items()):
        c = _value(cand, metric)
        if c is None:
            checks.append(GateCheck(name=f"floor {metric}", passed=False,
                                    detail=f"{metric} missing from the candidate's evaluation"))
        else:
            ok = c >= floor
            checks.append(GateCheck(name=f"floor {metric}", passed=ok,
                                    detail=f"{metric} {c:.4f} {'>=' if ok else '<'} floor {floor:g}"))
    return checks


def _baseline_checks(cfg: GateConfig, cand: Mapping[str, float]) -> list[GateCheck]:
    checks = []
    for b in cfg.beat_baselines:
        metric, key = cfg.baseline_metric, f"baseline/{b}/{cfg.baseline_metric}"
        c, base = _value(cand, metric), _value(cand, key)
        if c is None or base is None:
            checks.append(GateCheck(name=f"beats {b}", passed=False,
                                    detail=f"{metric if c is None else key} missing from the candidate's evaluation"))
        else:
            checks.append(GateCheck(name=f"beats {b}", passed=c >= base,
                                    detail=f"{metric} {c:.4f} vs baseline {b} {base:.4f}"))
    return checks


def _production_check(cfg: ProductionComparison, cand: Mapping[str, float]) -> GateCheck:
    """Off-policy comparison on production traffic; 'not applied' (passes, and says why) until enough evidence."""
    name, est = "production traffic", cfg.estimator
    n = _value(cand, "ope/n_labelled")
    if n is None:
        return GateCheck(name=name, passed=True, detail="not applied: no off-policy estimates in the candidate's "
                                                         "metrics (mixllm.ope.production_metrics did not run)")
    if n < cfg.min_labelled:
        return GateCheck(name=name, passed=True, detail=f"not applied: {n:.0f} labelled logged decisions "
                                                         f"(< min_labelled {cfg.min_labelled})")
    diff, low, high = (_value(cand, f"ope/diff/{est}{s}") for s in ("", "_low", "_high"))
    ess = [_value(cand, f"ope/{r}/ess") for r in ("candidate", "champion")]
    if diff is None or low is None or high is None or None in ess:
        return GateCheck(name=name, passed=True, detail=f"not applied: no {est} estimate of the champion")
    if min(ess) < cfg.min_ess:  # type: ignore[type-var]
        return GateCheck(name=name, passed=True, detail=f"not applied: effective sample size {min(ess):.1f} "
                                                         f"(< min_ess {cfg.min_ess:g}) on {n:.0f} decisions")
    c, b = _value(cand, f"ope/candidate/{est}"), _value(cand, f"ope/champion/{est}")
    worst = high if cfg.rule == "ci" else diff
    ok = worst >= -cfg.tolerance
    detail = (f"{est} on {n:.0f} logged decisions: candidate {c:.4f} vs champion {b:.4f}, difference {diff:+.4f} "
              f"[{low:+.4f}, {high:+.4f}], ESS {ess[0]:.1f}/{ess[1]:.1f}; tolerance {cfg.tolerance:g} "
              f"(rule {cfg.rule}): {'ok' if ok else 'worse than champion beyond tolerance'}")
    return GateCheck(name=name, passed=ok, detail=detail)


def check_gates(candidate: Mapping[str, float], champion: Mapping[str, float] | None,
                config: GateConfig | None = None) -> GateVerdict:
    """Decide whether `candidate` (an evaluation summary) may replace `champion` (None: no champion yet).

    Both summaries must come from the same held-out slice, or the comparison means nothing; the pipeline
    guarantees that by evaluating both routers in the same run.
    """
    cfg = config or GateConfig()
    checks = _floor_checks(cfg.floors, candidate) + _baseline_checks(cfg, candidate)
    if champion is not None:
        checks.append(_compare("aiq", cfg.aiq.metric, cfg.aiq.tolerance, candidate, champion))
        checks.append(_compare("budget quality", cfg.budget_quality.metric, cfg.budget_quality.tolerance,
                               candidate, champion))
        checks.extend(_slice_checks(cfg.task_slices, candidate, champion))
        checks.append(_production_check(cfg.production, candidate))
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    elif champion is None:
        reason = f"no champion yet; {len(checks)} absolute check(s) passed (floors, baselines)"
    else:
        reason = f"all {len(checks)} checks passed against the champion"
    return GateVerdict(passed=not failed, checks=tuple(checks), reason=reason)
