"""The data, training, evaluation and registry stages of the nightly pipeline, as plain functions.

Order: check landing files against the contracts -> ingest into the store -> snapshot (digest of exactly which rows)
-> train a candidate -> evaluate candidate AND champion on the same held-out slice -> gate -> register (always) ->
promote (only when the gates pass); then delivery (`mixllm.delivery`: package -> deploy -> smoke -> rollback).

Why plain functions: the Prefect flows (package `mixllm_flows`) stay thin (retries, names, parallelism) and every
stage is testable without Prefect. Configuration is one typed `PipelineConfig` (env ``MIXLLM_PIPELINE_*`` or a YAML
file). Its default data is the RouterBench sample packaged with mixllm (`mixllm/defaults/sample/`), so an installed
wheel runs from an empty folder; a checkout's quickstart passes the full `data/routerbench/` files explicitly.
"""

from __future__ import annotations

import hashlib
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mixllm.config import Settings
from mixllm.exceptions import ConfigError, ContractError
from mixllm.feedback import FeedbackConfig
from mixllm.ope import OPEConfig

SMOKE_PROMPT = "Which planet in the solar system is known as the Red Planet?"


class PipelineConfig(BaseSettings):
    """Everything one pipeline run needs besides `Settings` (where state lives)."""

    model_config = SettingsConfigDict(env_prefix="MIXLLM_PIPELINE_", env_nested_delimiter="__", extra="forbid",
                                      validate_default=True)

    landing: list[Path] = Field(default_factory=list, description="Log files to ingest (default: packaged sample).")
    feedback_landing: list[Path] = Field(default_factory=list, description="Feedback files to ingest.")
    test_paths: list[Path] = Field(default_factory=list, description="Held-out files (default: packaged sample).")
    max_train_queries_per_task: int | None = Field(default=None, gt=0, description="Subsample the snapshot.")
    max_test_queries_per_task: int | None = Field(default=None, gt=0, description="Subsample the held-out slice.")
    on_contract_failure: Literal["stop", "quarantine"] = "quarantine"
    max_quarantine_fraction: float = Field(default=0.05, ge=0, le=1,
                                           description="quarantine mode: stop when more of a file is bad.")
    router: dict[str, Any] = Field(default_factory=dict, description="RouterConfig overrides (e.g. epochs).")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description=(
        "how ratings become labels in the snapshot and in off-policy evaluation (e.g. "
        "MIXLLM_PIPELINE_FEEDBACK__MAX_LABELS_PER_SOURCE=500)"))
    ope: OPEConfig = Field(default_factory=OPEConfig, description=(
        "off-policy evaluation of candidate and champion on logged decisions (e.g. MIXLLM_PIPELINE_OPE__CI=bootstrap)"))
    baselines: tuple[str, ...] = ("single", "random", "oracle", "task_prior")
    gates_path: Path | None = None
    build_bento: bool = True
    bento_source: Path | None = Field(default=None, description="Folder with bentofile.yaml and the service "
                                      "(default: the installed mixllm_bento package).")
    service_url: str | None = Field(default=None, description="Running service to reload and smoke-test.")
    deploy_timeout_seconds: float = Field(default=60.0, gt=0)
    smoke_prompt: str = SMOKE_PROMPT
    seed: int = 0

    def resolved_landing(self) -> list[Path]:
        return self.landing or sorted(sample_data().glob("*_train.csv*"))

    def resolved_test_paths(self) -> list[Path]:
        return self.test_paths or sorted(sample_data().glob("*_test.csv*"))


def sample_data() -> Path:
    """The RouterBench slice packaged with mixllm (package data; see its README for source and licence)."""
    return Path(str(resources.files("mixllm.defaults").joinpath("sample")))


def load_pipeline_config(path: str | Path | None = None, **overrides: Any) -> PipelineConfig:
    """Config from a YAML file (optional), then environment, then explicit overrides; invalid -> `ConfigError`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read pipeline config {path}: {e}") from e
    try:
        env = PipelineConfig()  # environment wins over nothing, the file wins over the environment's defaults
        merged = _merge(_merge(env.model_dump(exclude_unset=True), data),
                        {k: v for k, v in overrides.items() if v is not None})
        return PipelineConfig(**merged)
    except ValidationError as e:
        raise ConfigError(f"invalid pipeline config: {e}") from e


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, nested settings key by key: a file setting `feedback.mapping` keeps the environment's
    `feedback.max_labels_per_source`. A nested model given as an object (not a dict) replaces the whole entry."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class LandingCheck(BaseModel):
    """Contract check of one landing file, before anything is written."""

    model_config = ConfigDict(frozen=True)

    path: str
    rows: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    extra_columns: tuple[str, ...] = ()  # kept as metadata, not checked (mixllm.data.read_log)


# ----------------------------------------------------------------------------------------- data stages -------
def check_landing(path: Path, config: PipelineConfig, kind: str = "log") -> LandingCheck:
    """Validate one landing file; raise `ContractError` when the policy says the run must stop.

    Policy ``stop``: any row failing the contract stops the run. ``quarantine``: bad rows go to the store's
    quarantine (with reason) and the run goes on, unless more than `max_quarantine_fraction` of the file is bad,
    which means the file itself is broken. Nothing is ever dropped silently.
    """
    from mixllm.contracts import validate_feedback, validate_log
    from mixllm.data import EXTRA_ATTR, read_feedback, read_log

    raw = read_log(path) if kind == "log" else read_feedback(path)
    result = (validate_log if kind == "log" else validate_feedback)(raw)
    bad = len(result.quarantined)
    reasons = result.quarantined["expectation"].value_counts().to_dict() if bad else {}
    check = LandingCheck(path=str(path), rows=len(raw), accepted=len(result.accepted), quarantined=bad,
                         reasons={str(k): int(v) for k, v in reasons.items()},
                         extra_columns=tuple(raw.attrs.get(EXTRA_ATTR, ())))
    fraction = bad / max(len(raw), 1)
    if bad and (config.on_contract_failure == "stop" or fraction > config.max_quarantine_fraction):
        example = result.quarantined["reason"].iloc[0]
        why = ("policy is 'stop'" if config.on_contract_failure == "stop"
               else f"{fraction:.1%} of the file is bad, above "
                    f"max_quarantine_fraction={config.max_quarantine_fraction}")
        raise ContractError(f"{path}: {bad} of {len(raw)} rows fail the {kind} contract ({why}); failed "
                            f"expectations {check.reasons}; first: {example}. Fix the file or change "
                            "MIXLLM_PIPELINE_ON_CONTRACT_FAILURE / MIXLLM_PIPELINE_MAX_QUARANTINE_FRACTION.")
    return check


def ingest(paths: list[Path], settings: Settings, kind: str = "log") -> list[dict[str, Any]]:
    """Land files in the store (re-ingesting the same rows is a no-op: rows are keyed by content digest)."""
    from mixllm.store import Store

    store = Store(settings.store_url)
    try:
        return [r.as_dict() for r in store.ingest(paths, kind=kind)]
    finally:
        store.dispose()


def _digest(df: pd.DataFrame) -> str:
    from mixllm.contracts import prepare, row_digests

    h = hashlib.sha256()
    for d in sorted(row_digests(prepare(df, "log"), "log")):
        h.update(d.encode())
    return h.hexdigest()


def subsample(df: pd.DataFrame, per_task: int | None, seed: int) -> pd.DataFrame:
    """Keep every row of `per_task` randomly chosen queries per task (all rows of a query stay together)."""
    if per_task is None or df.empty:
        return df.reset_index(drop=True)
    task = df["task"].fillna("(none)")
    # sorted first: which queries a seed picks must not depend on the order the store returned the rows in
    queries = df.assign(_task=task)[["_task", "query_id"]].drop_duplicates().sort_values(["_task", "query_id"])
    chosen = (queries.groupby("_task", group_keys=False)
              .apply(lambda g: g.sample(n=min(per_task, len(g)), random_state=seed)))
    keep = df.set_index(["query_id"]).index.isin(chosen["query_id"])
    return df[keep].reset_index(drop=True)


def snapshot(settings: Settings, config: PipelineConfig) -> tuple[pd.DataFrame, str]:
    """The training rows and the digest of exactly those rows: the store's log, with each rated decision labelled
    by its feedback (`mixllm.feedback`); the digest covers the feedback rows and the rating mapping too (it is the
    store's log digest when there is no feedback and no subsampling). Subsampling thins the full-information rows
    only: every decision a policy made (router_version or propensity set) is production signal and stays."""
    from mixllm.feedback import FEEDBACK_ATTR, label_decisions, snapshot_digest
    from mixllm.store import Store

    store = Store(settings.store_url)
    try:
        df, digest = store.snapshot()
        feedback, feedback_digest = store.feedback_snapshot()
    finally:
        store.dispose()
    if df.empty:
        raise ContractError(f"the store at {settings.store_url} holds no accepted log rows; ingest data first")
    labelled = label_decisions(df, feedback, config.feedback)
    df = labelled.rows
    if config.max_train_queries_per_task is not None:
        served = df["router_version"].notna() | df["propensity"].notna()
        df = pd.concat([subsample(df[~served], config.max_train_queries_per_task, config.seed), df[served]],
                       ignore_index=True)
        digest = _digest(df)
    df.attrs[FEEDBACK_ATTR] = {**labelled.summary(), "feedback_digest": feedback_digest}
    return df, snapshot_digest(digest, feedback_digest, config.feedback)


def held_out(config: PipelineConfig) -> pd.DataFrame:
    """The held-out slice both candidate and champion are evaluated on (validated; same rows for both)."""
    from mixllm.data import load_training_log

    paths = config.resolved_test_paths()
    if not paths:
        raise ConfigError("no held-out files: set MIXLLM_PIPELINE_TEST_PATHS (the packaged sample has none: "
                          "reinstall mixllm)")
    return subsample(load_training_log(paths), config.max_test_queries_per_task, config.seed)


# ----------------------------------------------------------------------------------------- model stages ------
def prepare_candidate(train: pd.DataFrame, config: PipelineConfig, settings: Settings) -> tuple[Any, Any]:
    """Tags and (re)trained embeddings (cached base embeddings are reused): the router without predictors, and the
    training set whose `names` the flow fans out over."""
    from mixllm.catalogue import load_catalogue
    from mixllm.router import MixLLMRouter, RouterConfig

    try:
        rcfg = RouterConfig(**config.router)
    except ValidationError as e:
        raise ConfigError(f"invalid router settings in the pipeline config: {e}") from e
    router = MixLLMRouter(config=rcfg, catalogue=load_catalogue(settings.catalogue_path))
    return router, router.fit_representation(train)


def fit_candidate_llm(name: str, router: Any, prepared: Any) -> Any:
    """One LLM's quality and length models (independent of every other LLM: the flow maps this over LLMs)."""
    return router.fit_llm(name, prepared)


def save_candidate(router: Any, prepared: Any, predictors: list[Any], out_dir: Path) -> Path:
    """Install the per-LLM predictors, stamp the manifest and save the artifact that is evaluated and served."""
    router.finish(prepared, predictors)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return Path(router.save(out_dir))


def evaluate_router(router_dir: Path, test: pd.DataFrame, config: PipelineConfig, settings: Settings,
                    train: pd.DataFrame | None = None) -> tuple[Any, dict[str, float]]:
    """Evaluation report of the router in `router_dir` on the held-out slice, and the flat metrics to gate/log.

    The metrics are the report's summary plus the operating point the service actually uses: mean quality and
    cost when routing at the default willingness to pay (``default_wtp/*``), the "quality at the default budget".
    """
    from mixllm.evaluation import evaluate
    from mixllm.routers.registry import load_router

    router = load_router(router_dir)
    report = evaluate(router, test, baselines=config.baselines, train_log=train, seed=config.seed)
    point = operating_point(router, test, settings.default_willingness_to_pay)
    return report, {**report.summary, **point}


def operating_point(router: Any, test: pd.DataFrame, willingness_to_pay: float) -> dict[str, float]:
    """Mean quality/cost of the router's choices at one willingness to pay, absolute and relative to the dearest
    model (the reference of every other figure)."""
    import numpy as np

    from mixllm.evaluation import TestSet
    from mixllm.replay import router_sweep

    ts = TestSet.from_log(test)
    choices = router_sweep("default_wtp", router, ts, [willingness_to_pay]).choices[0]
    cost, quality = ts.outcome(choices)
    ref = int(np.argmax(ts.cost.mean(axis=0)))
    ref_cost, ref_quality = float(ts.cost[:, ref].mean()), float(ts.quality[:, ref].mean())
    return {"default_wtp/quality": quality, "default_wtp/cost_usd": cost,
            "default_wtp/relative_quality": quality / ref_quality if ref_quality else float("nan"),
            "default_wtp/relative_cost": cost / ref_cost if ref_cost else float("nan"),
            "default_wtp/willingness_to_pay": float(willingness_to_pay)}


def champion_dir(settings: Settings, version: str | None = None) -> Path | None:
    """The champion's router directory, or None when nothing has been promoted yet. Pass the `version` read by
    `champion_version` so the directory and the version named in the registered tags are the same one."""
    from mixllm.registry import CHAMPION, Registry

    reg = Registry(settings)
    version = version or reg.version_for(CHAMPION)
    return reg.router_dir(version) if version else None


def champion_version(settings: Settings) -> str | None:
    """The version the champion alias points at, or None (a registry read: the flows run it as a retried task)."""
    from mixllm.registry import CHAMPION, Registry

    return Registry(settings).version_for(CHAMPION)


def gate(candidate: dict[str, float], champion: dict[str, float] | None, config: PipelineConfig) -> Any:
    from mixllm.gates import check_gates, load_gates

    return check_gates(candidate, champion, load_gates(config.gates_path))


def register(router_dir: Path, report: Any, metrics: dict[str, float], digest: str, train: pd.DataFrame,
             config: PipelineConfig, settings: Settings, verdict: Any, champion_version: str | None,
             run_name: str, champion_metrics: dict[str, float] | None = None) -> str:
    """Log the run and register the candidate as a new version (always, so the UI can compare failures too)."""
    from mixllm.catalogue import load_catalogue
    from mixllm.registry import Registry

    params = {"router": config.router, "n_train_rows": len(train), "n_train_queries": train["query_id"].nunique(),
              "max_train_queries_per_task": config.max_train_queries_per_task,
              "max_test_queries_per_task": config.max_test_queries_per_task, "baselines": list(config.baselines),
              "landing": [str(p) for p in config.resolved_landing()], "seed": config.seed,
              "feedback": config.feedback.model_dump(mode="json"), "ope": config.ope.model_dump(mode="json")}
    tags = {"gate_verdict": "passed" if verdict.passed else "failed", "gate_reason": verdict.reason[:4900],
            "compared_with_champion": champion_version or "none"}
    extra = {k: v for k, v in metrics.items() if k not in report.summary}
    extra.update({f"champion/{k}": v for k, v in (champion_metrics or {}).items()
                  if k in ("aiq", "quality_at_25pct_cost", "default_wtp/quality")})
    return Registry(settings).log_candidate(router_dir, report, digest, params, snapshot=train,
                                            catalogue=load_catalogue(settings.catalogue_path), tags=tags,
                                            run_name=run_name, extra_metrics=extra)


def promote(version: str, verdict: Any, settings: Settings) -> str:
    from mixllm.registry import Registry

    Registry(settings).promote(version, reason=f"gates passed: {verdict.reason}", who="pipeline")
    return f"promoted version {version} to champion ({verdict.reason})"


# ----------------------------------------------------------------------------------------- registry views ----
def versions_table(settings: Settings, metrics: tuple[str, ...] = ("aiq", "quality_at_25pct_cost",
                                                                    "default_wtp/quality")) -> str:
    """A plain-text table of every version (aliases, gate verdict, headline metrics) for the CLI and run logs."""
    from mixllm.registry import Registry

    rows = Registry(settings).versions()
    if not rows:
        return "no versions registered yet"
    head = f"{'version':>7}  {'aliases':<22} {'gate':<7} " + " ".join(f"{m:>22}" for m in metrics) + "  snapshot"
    lines = [head]
    for r in rows:
        vals = " ".join(f"{r['metrics'].get(m, float('nan')):>22.4f}" for m in metrics)
        lines.append(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {r['tags'].get('gate_verdict', '-'):<7} "
                     f"{vals}  {r['tags'].get('snapshot_digest', '')[:12]}")
    return "\n".join(lines)
