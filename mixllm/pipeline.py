"""The stages of the nightly pipeline, as plain functions the Prefect flows in ``flows/`` compose.

Order: check landing files against the contracts -> ingest into the store -> snapshot (digest of exactly which rows)
-> train a candidate -> evaluate candidate AND champion on the same held-out slice -> gate -> register (always) ->
promote (only when the gates pass) -> package a Bento -> deploy -> smoke test -> roll back when the smoke test fails.

Why plain functions: the flows stay thin (retries, names, parallelism) and every stage is testable without Prefect.
Configuration is one typed `PipelineConfig` (env ``MIXLLM_PIPELINE_*`` or a YAML file); its defaults are the
quickstart: the bundled RouterBench train files as landing files, the bundled test files as the held-out slice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mixllm.config import Settings, get_settings
from mixllm.exceptions import ConfigError, ContractError, MixLLMError, RegistryError
from mixllm.service_state import BUNDLED_ROUTER_DIRNAME

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO_ROOT / "data" / "routerbench"
SMOKE_PROMPT = "Which planet in the solar system is known as the Red Planet?"


class PipelineConfig(BaseSettings):
    """Everything one pipeline run needs besides `Settings` (where state lives)."""

    model_config = SettingsConfigDict(env_prefix="MIXLLM_PIPELINE_", extra="forbid", validate_default=True)

    landing: list[Path] = Field(default_factory=list, description="Log files to ingest (default: bundled train).")
    feedback_landing: list[Path] = Field(default_factory=list, description="Feedback files to ingest.")
    test_paths: list[Path] = Field(default_factory=list, description="Held-out log files (default: bundled test).")
    max_train_queries_per_task: int | None = Field(default=None, gt=0, description="Subsample the snapshot.")
    max_test_queries_per_task: int | None = Field(default=None, gt=0, description="Subsample the held-out slice.")
    on_contract_failure: Literal["stop", "quarantine"] = "quarantine"
    max_quarantine_fraction: float = Field(default=0.05, ge=0, le=1,
                                           description="quarantine mode: stop when more of a file is bad.")
    router: dict[str, Any] = Field(default_factory=dict, description="RouterConfig overrides (e.g. epochs).")
    baselines: tuple[str, ...] = ("single", "random", "oracle", "task_prior")
    gates_path: Path | None = None
    build_bento: bool = True
    bento_dir: Path = REPO_ROOT / "bento"
    service_url: str | None = Field(default=None, description="Running service to reload and smoke-test.")
    deploy_timeout_seconds: float = Field(default=60.0, gt=0)
    smoke_prompt: str = SMOKE_PROMPT
    seed: int = 0

    def resolved_landing(self) -> list[Path]:
        return self.landing or sorted(BUNDLED_DATA.glob("*_train.csv*"))

    def resolved_test_paths(self) -> list[Path]:
        return self.test_paths or sorted(BUNDLED_DATA.glob("*_test.csv*"))


def load_pipeline_config(path: str | Path | None = None, **overrides: Any) -> PipelineConfig:
    """Config from a YAML file (optional), then environment, then explicit overrides; invalid -> `ConfigError`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read pipeline config {path}: {e}") from e
    env = PipelineConfig()  # environment wins over nothing, the file wins over the environment's defaults
    try:
        merged = {**env.model_dump(exclude_unset=True), **data, **{k: v for k, v in overrides.items() if v is not None}}
        return PipelineConfig(**merged)
    except ValidationError as e:
        raise ConfigError(f"invalid pipeline config: {e}") from e


class LandingCheck(BaseModel):
    """Contract check of one landing file, before anything is written."""

    model_config = ConfigDict(frozen=True)

    path: str
    rows: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]


class StageResult(BaseModel):
    """What a deploy / smoke / package stage did, in words a person reads in the run log."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    action: str
    message: str


# ----------------------------------------------------------------------------------------- data stages -------
def check_landing(path: Path, config: PipelineConfig, kind: str = "log") -> LandingCheck:
    """Validate one landing file; raise `ContractError` when the policy says the run must stop.

    Policy ``stop``: any row failing the contract stops the run. ``quarantine``: bad rows go to the store's
    quarantine (with reason) and the run goes on, unless more than `max_quarantine_fraction` of the file is bad,
    which means the file itself is broken. Nothing is ever dropped silently.
    """
    from mixllm.contracts import validate_feedback, validate_log
    from mixllm.data import read_feedback, read_log

    raw = read_log(path) if kind == "log" else read_feedback(path)
    result = (validate_log if kind == "log" else validate_feedback)(raw)
    bad = len(result.quarantined)
    reasons = result.quarantined["expectation"].value_counts().to_dict() if bad else {}
    check = LandingCheck(path=str(path), rows=len(raw), accepted=len(result.accepted), quarantined=bad,
                         reasons={str(k): int(v) for k, v in reasons.items()})
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
    queries = df.assign(_task=task)[["_task", "query_id"]].drop_duplicates()
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
    fcfg = getattr(config, "feedback", None)
    labelled = label_decisions(df, feedback, fcfg)
    df = labelled.rows
    if config.max_train_queries_per_task is not None:
        served = df["router_version"].notna() | df["propensity"].notna()
        df = pd.concat([subsample(df[~served], config.max_train_queries_per_task, config.seed), df[served]],
                       ignore_index=True)
        digest = _digest(df)
    df.attrs[FEEDBACK_ATTR] = {**labelled.summary(), "feedback_digest": feedback_digest}
    return df, snapshot_digest(digest, feedback_digest, fcfg)


def held_out(config: PipelineConfig) -> pd.DataFrame:
    """The held-out slice both candidate and champion are evaluated on (validated; same rows for both)."""
    from mixllm.data import load_training_log

    paths = config.resolved_test_paths()
    if not paths:
        raise ConfigError("no held-out files: set MIXLLM_PIPELINE_TEST_PATHS or restore data/routerbench/*_test*")
    return subsample(load_training_log(paths), config.max_test_queries_per_task, config.seed)


# ----------------------------------------------------------------------------------------- model stages ------
def train_candidate(train: pd.DataFrame, config: PipelineConfig, settings: Settings, out_dir: Path) -> Path:
    """Fit a fresh router on the snapshot and save it; returns the saved directory (the three stages in a row)."""
    router, prepared = prepare_candidate(train, config, settings)
    return save_candidate(router, prepared, [fit_candidate_llm(name, router, prepared) for name in prepared.names],
                          out_dir)


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
    from mixllm.router import MixLLMRouter

    router = MixLLMRouter.load(router_dir)
    report = evaluate(router, test, baselines=config.baselines, train_log=train, seed=config.seed)
    point = operating_point(router, test, settings.default_willingness_to_pay)
    return report, {**report.summary, **point}


def operating_point(router: Any, test: pd.DataFrame, willingness_to_pay: float) -> dict[str, float]:
    """Mean quality/cost of the router's choices at one willingness to pay, absolute and relative to the dearest
    model (the reference of every other figure)."""
    import numpy as np

    from mixllm.baselines import router_sweep
    from mixllm.evaluation import TestSet

    ts = TestSet.from_log(test)
    choices = router_sweep("default_wtp", router, ts, [willingness_to_pay]).choices[0]
    cost, quality = ts.outcome(choices)
    ref = int(np.argmax(ts.cost.mean(axis=0)))
    ref_cost, ref_quality = float(ts.cost[:, ref].mean()), float(ts.quality[:, ref].mean())
    return {"default_wtp/quality": quality, "default_wtp/cost_usd": cost,
            "default_wtp/relative_quality": quality / ref_quality if ref_quality else float("nan"),
            "default_wtp/relative_cost": cost / ref_cost if ref_cost else float("nan"),
            "default_wtp/willingness_to_pay": float(willingness_to_pay)}


def champion_dir(settings: Settings) -> Path | None:
    """The current champion's router directory, or None when nothing has been promoted yet."""
    from mixllm.registry import CHAMPION, Registry

    reg = Registry(settings)
    return reg.router_dir(CHAMPION) if reg.version_for(CHAMPION) else None


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
              "landing": [str(p) for p in config.resolved_landing()], "seed": config.seed}
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


# ----------------------------------------------------------------------------------------- delivery stages ---
def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    return env


def package(version: str, settings: Settings, config: PipelineConfig) -> StageResult:
    """`bentoml build` of the service with the champion inside: a Bento that serves exactly `version` wherever it
    is deployed (no registry needed), tagged and labelled with it. Redeploying an older Bento tag is a rollback.

    The build context is a temporary copy of what the bentofile includes plus the router artifact under
    `champion_router/`, so a pipeline run never writes into the checkout."""
    import tempfile

    if not config.build_bento:
        return StageResult(ok=True, action="skipped", message="Bento build skipped: build_bento is false")
    bentofile = config.bento_dir / "bentofile.yaml"
    if not bentofile.is_file():
        return StageResult(ok=False, action="skipped",
                           message=f"Bento build skipped: {bentofile} not found (the service is not in this checkout)")
    repo = config.bento_dir.resolve().parent  # the bentofile's paths (bento/*.py, mixllm/**) are from the repo root
    env = _env(settings)
    with tempfile.TemporaryDirectory(prefix="mixllm-bento-") as tmp:
        context = Path(tmp)
        spec = _bento_context(repo, bentofile, context, _router_dir_for(settings, version))
        bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
        name = (yaml.safe_load(spec.read_text(encoding="utf-8")) or {}).get("name", "mixllm-router")
        # A retry of this task (or a re-promoted version) rebuilds the same tag: replace it, never fail on it.
        subprocess.run([bentoml_cli, "delete", "-y", f"{name}:v{version}"], capture_output=True, env=env, timeout=120)
        cmd = [bentoml_cli, "build", "-f", str(spec), "--version",
               f"v{version}", "--label", f"champion_version={version}", "--label",
               f"registered_model={settings.registered_model}", "-o", "tag", str(context)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=context, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return StageResult(ok=False, action="failed", message=f"bentoml build could not run: {e}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return StageResult(ok=False, action="failed",
                           message=f"bentoml build failed (exit {proc.returncode}): {' | '.join(tail)}")
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return StageResult(ok=True, action="built",
                       message=f"built Bento {tag} (serves version {version}) in {env['BENTOML_HOME']}")


def _bento_context(repo: Path, bentofile: Path, context: Path, router_dir: Path) -> Path:
    """Copy the sources the bentofile includes and the champion's artifact into `context`; returns the bentofile
    written there, which adds the artifact (the service serves a bundled router when it finds one)."""
    spec = yaml.safe_load(bentofile.read_text(encoding="utf-8"))
    for folder in ("bento", "mixllm", "data_contracts"):
        shutil.copytree(repo / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__"))
    requirements = (spec.get("python") or {}).get("requirements_txt")
    if requirements:
        shutil.copy2(repo / requirements, context / requirements)
    shutil.copytree(router_dir, context / BUNDLED_ROUTER_DIRNAME)
    spec["include"] = [*spec.get("include", []), f"{BUNDLED_ROUTER_DIRNAME}/**"]  # the service serves it
    out = context / "bentofile.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return out


def _router_dir_for(settings: Settings, version: str) -> Path:
    from mixllm.registry import Registry

    return Registry(settings).router_dir(version)


def _headers() -> dict[str, str]:
    token = os.environ.get("MIXLLM_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def deploy(version: str, settings: Settings, config: PipelineConfig) -> StageResult:
    """Make the running service serve `version`: POST /admin/reload, then wait until /readyz reports it.

    Without a configured service there is nothing to redeploy: the result says so, and `smoke_test` then checks
    the registered champion in-process instead (the service follows the alias when it starts or polls).
    """
    if not config.service_url:
        return StageResult(ok=True, action="skipped",
                           message="deploy skipped: no service URL configured (set MIXLLM_PIPELINE_SERVICE_URL); "
                                   "a service started with `mixllm serve` follows the champion alias by itself")
    url = config.service_url.rstrip("/")
    deadline = time.monotonic() + config.deploy_timeout_seconds
    how = "reloaded"
    try:
        with httpx.Client(timeout=30) as client:
            r = client.post(f"{url}/admin/reload", headers=_headers(), json={})
            if r.status_code in (401, 403):  # no/wrong token: the service still follows the alias by polling
                how = f"admin reload refused ({r.status_code}: set MIXLLM_ADMIN_TOKEN); waited for its alias poll"
            while time.monotonic() < deadline:
                if _serving_version(client, url) == version:
                    return StageResult(ok=True, action="reloaded",
                                       message=f"service at {url} now serves version {version} ({how})")
                time.sleep(1.0)
    except httpx.HTTPError as e:
        return StageResult(ok=False, action="failed", message=f"service at {url} unreachable: {e}")
    return StageResult(ok=False, action="failed",
                       message=f"service at {url} did not switch to version {version} within "
                               f"{config.deploy_timeout_seconds:.0f}s ({how})")


def _serving_version(client: httpx.Client, url: str) -> str | None:
    r = client.get(f"{url}/readyz")
    if r.status_code != 200:
        return None
    v = r.json().get("source_version")  # the registry version the service loaded (see mixllm.service_state)
    return None if v is None else str(v)


def smoke_test(version: str, settings: Settings, config: PipelineConfig) -> StageResult:
    """Route one real prompt through what now serves; a decision naming a catalogue model is a pass.

    With a service URL: POST /route on the live service. Without: load the champion from the registry with the
    same loader the service uses and route in-process (proves the registered artifact loads and routes).
    """
    if config.service_url:
        url = config.service_url.rstrip("/")
        try:
            with httpx.Client(timeout=60) as client:
                r = client.post(f"{url}/route", json={"prompt": config.smoke_prompt})
        except httpx.HTTPError as e:
            return StageResult(ok=False, action="failed", message=f"smoke test: {url}/route unreachable: {e}")
        if r.status_code != 200:
            return StageResult(ok=False, action="failed",
                               message=f"smoke test: {url}/route answered {r.status_code}: {r.text[:300]}")
        body = r.json()
        model, serving = body.get("model"), str(body.get("source_version"))
        if not (isinstance(model, str) and model):
            return StageResult(ok=False, action="failed", message=f"smoke test on {url}: no model: {r.text[:300]}")
        if serving != version:
            return StageResult(ok=False, action="failed",
                               message=f"smoke test on {url}: answered by version {serving}, expected {version}")
        return StageResult(ok=True, action="live",
                           message=f"smoke test on {url}: version {version} routed the smoke prompt to {model!r}")
    from mixllm.registry import Registry

    try:
        router = Registry(settings).load_router(version)
        decision = router.route([config.smoke_prompt], willingness_to_pay=settings.default_willingness_to_pay)[0]
    except MixLLMError as e:
        return StageResult(ok=False, action="failed", message=f"smoke test (in-process): {e}")
    ok = decision.model in router.models
    return StageResult(ok=ok, action="in-process",
                       message=f"smoke test (in-process, no service URL): version {version} loaded from the "
                               f"registry routes the smoke prompt to {decision.model!r}")


def rollback_after_failure(failed_version: str, why: str, settings: Settings) -> str:
    """Move champion back after a failed deploy/smoke test; returns what happened, in words."""
    from mixllm.registry import Registry

    reg = Registry(settings)
    try:
        target = reg.rollback(None, reason=f"automatic: {why}", who="pipeline")
    except RegistryError as e:
        return f"automatic rollback impossible ({e}); version {failed_version} stays champion - investigate"
    reg.set_tags(failed_version, {"smoke_test": f"failed: {why}"[:4900]})
    return f"ROLLED BACK: champion moved from version {failed_version} back to {target} because {why}"


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


def run_summary_json(**fields: Any) -> str:
    return json.dumps(fields, indent=2, default=str)
