"""Drift of logged traffic against the champion's training data: should the nightly pipeline run now?

A router trained last night is only as good as the match between last night's data and today's questions. Four
checks, each with a threshold in a typed file (`defaults/drift.yaml`, `DriftConfig`), compare the last window of
logged requests with the rows the champion was trained on (the store's rows up to its `data_until`):
- **query embeddings**: a two-sample test (maximum mean discrepancy, RBF kernel with the median-distance bandwidth,
  permutation p-value) on the champion's own embeddings, the representation its predictors read;
- **far from every tag**: the share of prompts whose similarity to the nearest tag centroid is below what 95% of
  training prompts reach (questions the tags do not cover);
- **calibration per model**: predicted vs observed quality on labelled decisions (observed quality, or ratings
  joined exactly as the nightly snapshot joins them: `mixllm.feedback.label_decisions`); it fires only when the
  worst model's error is both beyond the threshold and unlikely to be label noise (a z-test, Bonferroni over the
  models checked): without the test, 45 labels of a model with quality near 0.5 crossed 0.15 on a stationary day
  in `bench/ops.py`. The error is measured against the champion's own error on rows it was not trained on (the
  pipeline's held-out slice), chosen the same way: a router's predicted quality of the model it *chose* is biased
  up on any data (it chose that model because the estimate was high: the optimizer's curse), so an unchanged
  world shows a gap of its own (LLMRouter nemotron: predicted 0.646 vs observed 0.467 on a stationary week, p
  0.003 against zero). Only a change of that gap is drift;
- **cost per request**: the champion's predicted spend at the service's default willingness to pay, window over
  training prompts (the mix moved toward questions that need dear models).
Crossing a threshold is a *reason*; the flow (`mixllm_flows.drift`) turns reasons into a nightly run and logs the
report (HTML with the figure, and the PNG) to MLflow. Evidently would draw the report, but 0.7.23 cannot be
imported with pandas 3 (ImportError in its legacy package), so the report is matplotlib + a small HTML page.
"""

from __future__ import annotations

import base64
import html
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mixllm.exceptions import ConfigError


class DriftConfig(BaseModel):
    """Thresholds and sample sizes of the drift monitor (see defaults/drift.yaml for what each one means)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_hours: float = Field(24.0, gt=0)
    min_requests: int = Field(100, ge=10)
    max_sample: int = Field(400, ge=20)
    mmd_alpha: float = Field(0.01, gt=0, lt=1)
    permutations: int = Field(300, ge=50)
    far_quantile: float = Field(0.05, gt=0, lt=0.5)
    far_share_max: float = Field(0.15, gt=0, le=1)
    calibration_max_abs_error: float = Field(0.15, gt=0, le=1)
    calibration_min_labels: int = Field(30, ge=1)
    calibration_alpha: float = Field(0.01, gt=0, lt=1)
    cost_ratio_max: float = Field(1.5, gt=1)
    seed: int = 0


def load_drift_config(path: str | Path | None = None) -> DriftConfig:
    """Read a drift threshold file (None: the packaged default); a bad file is a `ConfigError`."""
    try:
        if path is None:
            text, where = resources.files("mixllm.defaults").joinpath("drift.yaml").read_text("utf-8"), "defaults"
        else:
            text, where = Path(path).read_text(encoding="utf-8"), str(path)
        return DriftConfig.model_validate(yaml.safe_load(text) or {})
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read drift file {path}: {e}") from e
    except ValidationError as e:
        raise ConfigError(f"invalid drift file {where}: {e}") from e


@dataclass(frozen=True)
class Check:
    """One check: its figure, the threshold, whether it fired, and a sentence a person can act on."""

    name: str
    value: float | None
    threshold: float
    fired: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReport:
    router_version: str
    window_start: str
    window_end: str
    window_requests: int
    reference_requests: int
    checks: list[Check]
    decided: bool  # False when the window held too few requests to test
    note: str = ""

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.fired]

    @property
    def drifted(self) -> bool:
        return self.decided and any(c.fired for c in self.checks)

    def metrics(self) -> dict[str, float]:
        """Flat numeric figures for MLflow."""
        out = {"window_requests": float(self.window_requests), "reference_requests": float(self.reference_requests),
               "drifted": float(self.drifted)}
        out |= {f"{c.name}/value": float(c.value) for c in self.checks if c.value is not None}
        return out | {f"{c.name}/fired": float(c.fired) for c in self.checks}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"drifted": self.drifted, "reasons": self.reasons}


# ----------------------------------------------------------------------------------------------- statistics --
def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[float, float,
                                                                                                 np.ndarray]:
    """(unbiased MMD^2, permutation p-value, null statistics) of samples x [n, d] and y [m, d], RBF kernel with
    the median pairwise distance of the pooled sample as bandwidth."""
    z = np.vstack([x, y]).astype(np.float64)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    med = np.median(sq[np.triu_indices(len(z), 1)])
    k = np.exp(-sq / max(med, 1e-12))
    n = len(x)
    stat = _mmd2(k, np.arange(len(z)) < n)
    null = np.array([_mmd2(k, rng.permutation(len(z)) < n) for _ in range(permutations)])
    return stat, float((1 + (null >= stat).sum()) / (1 + permutations)), null


def _mmd2(k: np.ndarray, in_x: np.ndarray) -> float:
    kx, ky, kxy = k[np.ix_(in_x, in_x)], k[np.ix_(~in_x, ~in_x)], k[np.ix_(in_x, ~in_x)]
    n, m = len(kx), len(ky)
    return float((kx.sum() - np.trace(kx)) / (n * (n - 1)) + (ky.sum() - np.trace(ky)) / (m * (m - 1))
                 - 2 * kxy.mean())


def _sample(df: pd.DataFrame, size: int, rng: np.random.Generator) -> pd.DataFrame:
    return df if len(df) <= size else df.iloc[np.sort(rng.choice(len(df), size, replace=False))]


def _requests(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per request (a full-information training log has a row per model; a request is its id and prompt
    together, the router's training key)."""
    return rows.dropna(subset=["prompt"]).drop_duplicates(["query_id", "prompt"], keep="last").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------- checks --
def _embedding_check(ref_emb: np.ndarray, win_emb: np.ndarray, cfg: DriftConfig,
                     rng: np.random.Generator) -> Check:
    if ref_emb.shape[1] == 0:
        return Check("embedding_mmd", None, cfg.mmd_alpha, False, "the router has no query embeddings (a baseline)")
    stat, p, null = mmd_test(ref_emb, win_emb, cfg.permutations, rng)
    fired = p < cfg.mmd_alpha
    return Check("embedding_mmd", p, cfg.mmd_alpha, fired,
                 f"MMD^2 {stat:.4f}, permutation p = {p:.4f} ({'below' if fired else 'not below'} {cfg.mmd_alpha})",
                 {"mmd2": stat, "null": null.tolist()})


def _tag_check(router: Any, ref_emb: np.ndarray, win_emb: np.ndarray, cfg: DriftConfig) -> Check:
    centroids = getattr(router, "_tag_centroids", None)
    if centroids is None or not len(centroids) or ref_emb.shape[1] != np.shape(centroids)[1]:
        return Check("far_from_tags", None, cfg.far_share_max, False, "the router has no tag centroids")
    ref_sim, win_sim = (ref_emb @ centroids.T).max(1), (win_emb @ centroids.T).max(1)
    cut = float(np.quantile(ref_sim, cfg.far_quantile))
    share = float((win_sim < cut).mean())
    return Check("far_from_tags", share, cfg.far_share_max, share > cfg.far_share_max,
                 f"{share:.1%} of prompts are farther from every tag than {1 - cfg.far_quantile:.0%} of training "
                 f"prompts (similarity < {cut:.3f}); limit {cfg.far_share_max:.0%}",
                 {"cut": cut, "reference_similarity": ref_sim.tolist(), "window_similarity": win_sim.tolist()})


def reference_calibration(router: Any, rows: pd.DataFrame, willingness_to_pay: float, cfg: DriftConfig,
                          rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-model calibration of the champion's own choices on labelled rows it was not trained on (the pipeline's
    held-out slice: every model's quality per query): for each sampled request the model it chooses at
    `willingness_to_pay`, its predicted quality against that row's label. This is the gap an unchanged world shows
    (see the module docstring); the window's gap is tested against it."""
    rows = rows[rows["quality"].notna()] if "quality" in rows else rows.iloc[:0]
    req = _sample(_requests(rows), 2 * cfg.max_sample, rng)
    if req.empty:
        return {}
    pred = router.predict(req["prompt"].tolist(), _tokens(req))
    chosen = [router.models[j] for j in np.asarray(router.choose(pred, willingness_to_pay), dtype=int)]
    col = {m: j for j, m in enumerate(router.models)}
    label = {(q, p, m): v for q, p, m, v in zip(rows["query_id"], rows["prompt"], rows["model"], rows["quality"])}
    got = [(m, float(np.asarray(pred.quality, float)[i, col[m]]), label.get((q, p, m)))
           for i, (q, p, m) in enumerate(zip(req["query_id"], req["prompt"], chosen))]
    frame = pd.DataFrame([(m, a, b) for m, a, b in got if b is not None], columns=["model", "predicted", "quality"])
    return {m: _calibration_of(g) for m, g in frame.groupby("model")}


def _calibration_check(router: Any, labelled: pd.DataFrame, cfg: DriftConfig, rng: np.random.Generator,
                       baseline: dict[str, dict[str, float]] | None = None) -> Check:
    """Worst model's calibration error on the window's labelled decisions, minus the champion's own error on held-out
    rows (`baseline`, from `reference_calibration`; a model without `calibration_min_labels` held-out choices is
    compared with zero, and the detail says so)."""
    labelled = labelled[labelled["quality"].notna() & labelled["model"].isin(router.models)]
    if labelled.empty:
        return Check("calibration", None, cfg.calibration_max_abs_error, False, "no labelled decisions in the window")
    req = _sample(_requests(labelled), 2 * cfg.max_sample, rng)  # bounded encoder work; labels of those requests
    pos = {k: i for i, k in enumerate(zip(req["query_id"], req["prompt"]))}
    row = pd.Series([pos.get(k, -1) for k in zip(labelled["query_id"], labelled["prompt"])], index=labelled.index)
    labelled = labelled[row >= 0]
    pred = router.predict(req["prompt"].tolist(), _tokens(req))
    col = {m: j for j, m in enumerate(router.models)}
    predicted = np.asarray(pred.quality, float)[row[row >= 0].to_numpy(), labelled["model"].map(col).to_numpy()]
    frame = labelled.assign(predicted=predicted)
    per_model = {m: _calibration_of(g) for m, g in frame.groupby("model")}
    enough = {m: v for m, v in per_model.items() if v["labels"] >= cfg.calibration_min_labels}
    if not enough:
        return Check("calibration", None, cfg.calibration_max_abs_error, False,
                     f"no model has {cfg.calibration_min_labels} labelled decisions yet", {"per_model": per_model})
    shift = {m: _shift(v, (baseline or {}).get(m), cfg) for m, v in enough.items()}
    worst = max(shift, key=lambda m: abs(shift[m][0]))
    err, se, base = shift[worst]
    w = enough[worst]
    p = _two_sided_p(err, se)
    alpha = cfg.calibration_alpha / len(enough)  # Bonferroni: the worst of several models is looked at
    fired = abs(err) > cfg.calibration_max_abs_error and p < alpha
    against = (f"its held-out error {base:+.3f}" if base is not None else "zero (no held-out calibration for it)")
    return Check("calibration", abs(err), cfg.calibration_max_abs_error, fired,
                 f"{worst}: predicted quality {w['predicted']:.3f} vs observed {w['observed']:.3f} on {w['labels']} "
                 f"labels, error {w['predicted'] - w['observed']:+.3f} against {against} (p = {p:.2g} that the "
                 f"change is noise; fires beyond {cfg.calibration_max_abs_error} with p < {alpha:.2g})",
                 {"per_model": per_model, "p": p, "held_out": baseline or {}})


def _shift(window: dict[str, float], held_out: dict[str, float] | None,
           cfg: DriftConfig) -> tuple[float, float, float | None]:
    """(window error minus held-out error, its standard error, the held-out error or None when too few)."""
    err = window["predicted"] - window["observed"]
    if not held_out or held_out["labels"] < cfg.calibration_min_labels:
        return err, window["se"], None
    base = held_out["predicted"] - held_out["observed"]
    return err - base, float(np.hypot(window["se"], held_out["se"])), base


def _calibration_of(g: pd.DataFrame) -> dict[str, float]:
    """Mean predicted and observed quality of one model's labelled decisions, and the standard error of their
    per-decision difference (labels are noisy: 45 thumbs of a coin-flip model move the mean by +-0.15)."""
    diff = (g["predicted"] - g["quality"]).to_numpy(float)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    return {"labels": int(len(g)), "predicted": float(g["predicted"].mean()), "observed": float(g["quality"].mean()),
            "se": se}


def _two_sided_p(err: float, se: float) -> float:
    """Normal-approximation p-value of a mean error this large if the model were calibrated."""
    from math import erfc, sqrt

    if not np.isfinite(se) or se <= 0:
        return 0.0 if err else 1.0
    return float(erfc(abs(err) / se / sqrt(2)))


def _cost_check(router: Any, ref: Any, win: Any, wtp: float, cfg: DriftConfig) -> Check:
    def spend(pred: Any) -> float:
        chosen = np.asarray(router.choose(pred, wtp))
        return float(np.nan_to_num(np.asarray(pred.cost, float)[np.arange(len(chosen)), chosen]).mean())

    before, now = spend(ref), spend(win)
    ratio = now / before if before > 0 else float("inf")
    return Check("cost_per_request", ratio, cfg.cost_ratio_max, ratio > cfg.cost_ratio_max,
                 f"predicted ${now * 1000:.3f} per 1k requests vs ${before * 1000:.3f} on the training prompts "
                 f"(x{ratio:.2f}) at willingness to pay {wtp:g}", {"window": now, "reference": before})


def _tokens(df: pd.DataFrame) -> list[int | None]:
    return [None if pd.isna(t) else int(t) for t in df["prompt_tokens"]]


# ------------------------------------------------------------------------------------------------ monitor --
def split_window(logs: pd.DataFrame, data_until: str | None, config: DriftConfig,
                 now: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame, datetime, datetime]:
    """(reference rows: landed up to the champion's data_until, window rows: the last window after it, start, end).

    Without a data_until (an old artifact) every row before the window is the reference."""
    end = now or datetime.now(timezone.utc)
    start = end - timedelta(hours=config.window_hours)
    ts = pd.to_datetime(logs["ts"], utc=True)
    until = pd.Timestamp(data_until) if data_until else pd.Timestamp(start)
    until = until.tz_localize("UTC") if until.tzinfo is None else until
    window = logs[(ts > max(pd.Timestamp(start), until)) & (ts <= pd.Timestamp(end))]
    return logs[ts <= until], window, start, end


def held_out_slice(pipeline_config: str | Path | None = None) -> pd.DataFrame | None:
    """The nightly's held-out slice (`mixllm.pipeline.held_out`: rows no champion trained on), the calibration
    baseline; None when no held-out files are configured (the check then compares with zero)."""
    from mixllm.pipeline import held_out, load_pipeline_config

    try:
        return held_out(load_pipeline_config(pipeline_config))
    except ConfigError:
        return None


def monitor(router: Any, reference: pd.DataFrame, window: pd.DataFrame, config: DriftConfig,
            willingness_to_pay: float, feedback: pd.DataFrame | None = None,
            window_start: datetime | None = None, window_end: datetime | None = None,
            held_out: pd.DataFrame | None = None) -> DriftReport:
    """Run the four checks of the window against the reference rows (see the module docstring). `held_out`:
    labelled rows the champion was not trained on (the pipeline's held-out slice), the calibration baseline;
    without it the calibration error is compared with zero."""
    from mixllm.feedback import label_decisions

    rng = np.random.default_rng(config.seed)
    ref_req, win_req = _requests(reference), _requests(window)
    span = [str(window_start or ""), str(window_end or "")]
    version = str(getattr(router, "version", ""))
    if len(win_req) < config.min_requests or len(ref_req) < config.min_requests:
        return DriftReport(version, *span, len(win_req), len(ref_req), [], False,
                           f"too few requests to test: {len(win_req)} in the window, {len(ref_req)} in the "
                           f"reference (need {config.min_requests} each)")
    ref_s, win_s = _sample(ref_req, config.max_sample, rng), _sample(win_req, config.max_sample, rng)
    ref_pred = router.predict(ref_s["prompt"].tolist(), _tokens(ref_s))
    win_pred = router.predict(win_s["prompt"].tolist(), _tokens(win_s))
    ref_emb, win_emb = np.asarray(ref_pred.embeddings), np.asarray(win_pred.embeddings)
    labelled = label_decisions(window, feedback if feedback is not None else pd.DataFrame(),
                               now=window_end).rows
    checks = [_embedding_check(ref_emb, win_emb, config, rng), _tag_check(router, ref_emb, win_emb, config),
              _calibration_check(router, labelled, config, rng, None if held_out is None else
                                 reference_calibration(router, held_out, willingness_to_pay, config,
                                                       np.random.default_rng(config.seed + 1))),
              _cost_check(router, ref_pred, win_pred, willingness_to_pay, config)]
    return DriftReport(version, *span, len(win_req), len(ref_req), checks, True)


# ------------------------------------------------------------------------------------------------- report --
def plot(report: DriftReport, path: Path) -> Path:
    """One PNG with a panel per check that has data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    by = {c.name: c for c in report.checks}
    _panel_mmd(axes[0], by.get("embedding_mmd"))
    _panel_tags(axes[1], by.get("far_from_tags"))
    _panel_calibration(axes[2], by.get("calibration"))
    _panel_cost(axes[3], by.get("cost_per_request"))
    fig.suptitle(f"drift of router {report.router_version}: window {report.window_start[:16]} -> "
                 f"{report.window_end[:16]} ({report.window_requests} requests) - "
                 f"{'DRIFT' if report.drifted else 'no drift' if report.decided else 'not decided'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _panel_mmd(ax: Any, c: Check | None) -> None:
    ax.set_title("query embeddings: MMD^2 vs permutations")
    if c is None or "null" not in c.extra:
        return
    ax.hist(c.extra["null"], bins=30, color="0.7")
    ax.axvline(c.extra["mmd2"], color="red" if c.fired else "green", label=f"window, p={c.value:.3g}")
    ax.legend(fontsize=8)


def _panel_tags(ax: Any, c: Check | None) -> None:
    ax.set_title("similarity to the nearest tag")
    if c is None or "cut" not in c.extra:
        return
    ax.hist(c.extra["reference_similarity"], bins=30, alpha=0.6, density=True, label="training")
    ax.hist(c.extra["window_similarity"], bins=30, alpha=0.6, density=True, label=f"window ({c.value:.0%} far)")
    ax.axvline(c.extra["cut"], color="k", ls="--")
    ax.legend(fontsize=8)


def _panel_calibration(ax: Any, c: Check | None) -> None:
    ax.set_title("predicted vs observed quality per model")
    per = (c.extra.get("per_model") if c else None) or {}
    if not per:
        return
    names = list(per)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [per[m]["predicted"] for m in names], 0.4, label="predicted")
    ax.bar(x + 0.2, [per[m]["observed"] for m in names], 0.4, label="observed")
    ax.set_xticks(x, [f"{m.split('/')[-1][:14]} ({per[m]['labels']})" for m in names], rotation=45, ha="right",
                  fontsize=7)
    ax.legend(fontsize=8)


def _panel_cost(ax: Any, c: Check | None) -> None:
    ax.set_title("predicted $ per 1k requests")
    if c is None or "window" not in c.extra:
        return
    ax.bar(["training", "window"], [c.extra["reference"] * 1000, c.extra["window"] * 1000],
           color=["0.6", "red" if c.fired else "green"])


def to_html(report: DriftReport, png: Path | None) -> str:
    """A self-contained page: verdict, one row per check, the figure inline."""
    rows = "".join(f"<tr><td>{html.escape(c.name)}</td><td>{'' if c.value is None else f'{c.value:.4g}'}</td>"
                   f"<td>{c.threshold:g}</td><td>{'<b>fired</b>' if c.fired else 'ok'}</td>"
                   f"<td>{html.escape(c.detail)}</td></tr>" for c in report.checks)
    img = (f'<img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" style="width:100%">'
           if png is not None and png.exists() else "")
    verdict = ("DRIFT: " + "; ".join(report.reasons)) if report.drifted else (
        "no drift" if report.decided else f"not decided: {report.note}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mixllm drift {report.router_version}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}</style></head><body>"
            f"<h1>Drift report: router {html.escape(report.router_version)}</h1>"
            f"<p>Window {html.escape(report.window_start)} to {html.escape(report.window_end)}: "
            f"{report.window_requests} requests vs {report.reference_requests} training requests.</p>"
            f"<p><b>{html.escape(verdict)}</b></p><table><tr><th>check</th><th>value</th><th>threshold</th>"
            f"<th>verdict</th><th>detail</th></tr>{rows}</table>{img}</body></html>")


def write_report(report: DriftReport, directory: Path) -> dict[str, Path]:
    """drift.png, drift.html and drift.json in `directory` (created)."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    png = plot(report, directory / "drift.png") if report.decided else None
    page = directory / "drift.html"
    page.write_text(to_html(report, png), encoding="utf-8")
    data = directory / "drift.json"
    data.write_text(json.dumps(report.as_dict(), default=str, indent=1), encoding="utf-8")
    return {"html": page, "json": data} | ({"png": png} if png else {})

