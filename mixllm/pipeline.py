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
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mixllm.config import Settings
from mixllm.exceptions import ConfigError, ContractError
from mixllm.feedback import FeedbackConfig
from mixllm.ope import OPEConfig

SMOKE_PROMPT = "Which planet in the solar system is known as the Red Planet?"
SNAPSHOT_READ_ATTR = "mixllm_snapshot_read"  # DataFrame.attrs key: rows reused / read by the snapshot
_DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls|ws|wss|ucx)://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


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
    runner: Literal["thread", "dask"] = Field(default="thread", description=(
        "where the per-LLM training and the two evaluations run: 'thread' (Prefect's thread pool in the flow's "
        "process) or 'dask' (a Dask cluster through prefect-dask; same results)"))
    dask_address: str | None = Field(default=None, description=(
        "runner 'dask': scheduler of a running cluster (e.g. tcp://10.0.0.5:8786); unset: a LocalCluster of "
        "`dask_workers` processes for the run"))
    incremental_snapshot: bool = Field(default=True, description=(
        "read only the log rows landed since the previous snapshot (kept under <home>/snapshots/); same rows "
        "and digest as a full read"))
    dask_workers: int = Field(default=2, ge=1, le=64, description="runner 'dask' without an address: worker "
                              "processes of the run's LocalCluster (1 thread each)")
    add_newcomers: bool = Field(default=True, description=(
        "when the snapshot has rows of catalogue LLMs the champion lacks, the night's candidate is the champion "
        "plus those LLMs alone (on probation), not a full retrain: see `add_newcomers`"))
    graduation_labels: int = Field(default=50, ge=0, description=(
        "labelled logged decisions an LLM on probation needs before a retrain lets it be chosen greedily (then "
        "the gates judge it like any other LLM, on held-out rows and on production traffic)"))
    newcomer_prior_rows: float = Field(default=30.0, ge=0, description=(
        "pseudo-rows of the other LLMs' mean per-task quality in a newcomer's per-task prior (its prediction "
        "leans on what the catalogue does there while it has few rows of its own)"))

    @model_validator(mode="after")
    def _dask_settings_need_dask(self) -> "PipelineConfig":
        if self.dask_address is not None:
            if self.runner != "dask":
                raise ValueError(f"dask_address={self.dask_address!r} is set but runner={self.runner!r}; set "
                                 "runner: dask (MIXLLM_PIPELINE_RUNNER=dask) or remove the address")
            if not _DASK_ADDRESS.fullmatch(self.dask_address):
                raise ValueError(f"dask_address={self.dask_address!r} is not a scheduler address; expected "
                                 "[tcp|tls|ws|wss|ucx]://host:port, e.g. tcp://10.0.0.5:8786")
        return self

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
    file_digest: str = ""  # sha256 of the file's bytes, and the contract digest it was checked against:
    contract: str = ""  # `ingest` reuses `result` for the same file under the same contract
    result: Any = Field(default=None, exclude=True, repr=False)  # the ValidationResult (not serialised)


# ----------------------------------------------------------------------------------------- data stages -------
def check_landing(path: Path, config: PipelineConfig, kind: str = "log") -> LandingCheck:
    """Validate one landing file; raise `ContractError` when the policy says the run must stop.

    Policy ``stop``: any row failing the contract stops the run. ``quarantine``: bad rows go to the store's
    quarantine (with reason) and the run goes on, unless more than `max_quarantine_fraction` of the file is bad,
    which means the file itself is broken. Nothing is ever dropped silently.
    """
    from mixllm.config import get_settings
    from mixllm.contracts import contract_digest, validate
    from mixllm.data import EXTRA_ATTR, read_feedback, read_log
    from mixllm.store import file_digest

    fdigest = file_digest(Path(path))  # before the read: a file replaced meanwhile gets another digest
    raw = read_log(path) if kind == "log" else read_feedback(path)
    max_chars = get_settings().max_prompt_chars
    result = validate(raw, kind, max_prompt_chars=max_chars)
    bad = len(result.quarantined)
    reasons = result.quarantined["expectation"].value_counts().to_dict() if bad else {}
    check = LandingCheck(path=str(path), rows=len(raw), accepted=len(result.accepted), quarantined=bad,
                         reasons={str(k): int(v) for k, v in reasons.items()},
                         extra_columns=tuple(raw.attrs.get(EXTRA_ATTR, ())), file_digest=fdigest,
                         contract=contract_digest(kind, max_prompt_chars=max_chars), result=result)
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


def ingest(paths: list[Path], settings: Settings, kind: str = "log",
           checks: list[LandingCheck] | tuple[LandingCheck, ...] = ()) -> list[dict[str, Any]]:
    """Land files in the store (re-ingesting the same rows is a no-op: rows are keyed by content digest).
    `checks`: the landing checks of these files: their validation is reused, not run again (same bytes and
    contract only; any other file is validated by the store)."""
    from mixllm.store import Store

    checked = {(c.file_digest, c.contract): c.result for c in checks if c.result is not None and c.file_digest}
    store = Store(settings.store_url)
    try:
        return [r.as_dict() for r in store.ingest(paths, kind=kind, checked=checked)]
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
        df, digest, read = _log_rows(store, settings, config)
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
    df.attrs[SNAPSHOT_READ_ATTR] = read
    return df, snapshot_digest(digest, feedback_digest, config.feedback)


def _log_rows(store: Any, settings: Settings, config: PipelineConfig) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """The store's log rows and their digest: only the rows since the previous snapshot read when
    `config.incremental_snapshot` (same rows, order and digest as a full read: `mixllm.snapshots`)."""
    from dataclasses import asdict

    from mixllm.snapshots import cache_folder, incremental_snapshot

    if not config.incremental_snapshot:
        df, digest = store.snapshot()
        return df, digest, {"reused": 0, "read": len(df), "full": True, "reason": "incremental_snapshot off"}
    df, digest, read = incremental_snapshot(store, cache_folder(settings.ensure_home(), store.url))
    return df, digest, asdict(read)


def held_out(config: PipelineConfig) -> pd.DataFrame:
    """The held-out slice both candidate and champion are evaluated on (validated; same rows for both)."""
    from mixllm.data import load_training_log

    paths = config.resolved_test_paths()
    if not paths:
        raise ConfigError("no held-out files: set MIXLLM_PIPELINE_TEST_PATHS (the packaged sample has none: "
                          "reinstall mixllm)")
    return subsample(load_training_log(paths), config.max_test_queries_per_task, config.seed)


# ----------------------------------------------------------------------------------------- model stages ------
def prepare_candidate(train: pd.DataFrame, config: PipelineConfig,
                      settings: Settings) -> tuple[Any, Any, dict[str, float]]:
    """Tags and (re)trained embeddings (cached base embeddings are reused): the router without predictors, the
    training set whose `names` the flow fans out over, and the wall seconds of ``encode`` and ``representation``.

    ``encode`` is the base encoder over the snapshot's prompts, run first on its own so a night reports what new
    prompts cost (cached prompts are only read back); `fit_representation` then finds every base vector in the
    cache (the same vectors: the encoder's batches depend on the set of texts only), so ``representation`` is
    tags, fine-tuning (or adapter) and re-encoding. Without the cache both are in ``representation``."""
    from mixllm.catalogue import load_catalogue
    from mixllm.embeddings import QueryEncoder
    from mixllm.router import MixLLMRouter, RouterConfig
    from mixllm.timing import StageClock

    try:
        rcfg = RouterConfig(**config.router)
    except ValidationError as e:
        raise ConfigError(f"invalid router settings in the pipeline config: {e}") from e
    router = MixLLMRouter(config=rcfg, catalogue=load_catalogue(settings.catalogue_path))
    clock = StageClock()
    cache = router._cache()
    if cache is not None:
        with clock.time("encode"):
            prompts = train["prompt"].astype(str).drop_duplicates().tolist()
            QueryEncoder.base(rcfg.max_seq_length, rcfg.truncation).encode(prompts, cache)
    with clock.time("representation"):
        prepared = router.fit_representation(train)
    return router, prepared, clock.seconds


def llm_slices(prepared: Any) -> list[Any]:
    """One training set per LLM: only that LLM's log rows, without the prompts (the per-query features and
    embeddings stay whole). Why: a Dask worker receives its task's arguments by value, so each task ships what its
    LLM needs, not the whole log; `fit_llm` on a slice trains exactly what it trains on the whole set."""
    from dataclasses import replace

    log = prepared.log.drop(columns=["prompt"], errors="ignore")
    out = []
    for name in prepared.names:
        mask = (log["model"] == name).to_numpy()
        out.append(replace(prepared, log=log[mask].reset_index(drop=True), codes=prepared.codes[mask],
                           names=(name,)))
    return out


def fit_candidate_llm(name: str, router_config: Any, prepared: Any) -> Any:
    """One LLM's quality and length models (independent of every other LLM: the flow maps this over LLMs).

    Takes the router's config, not the router: `fit_llm` reads only the config and the training set, and the
    router holds the fine-tuned encoder (~90 MB) that a Dask task would otherwise carry to its worker."""
    from mixllm.router import MixLLMRouter

    return MixLLMRouter(config=router_config).fit_llm(name, prepared)


# ----------------------------------------------------------------------------- newcomers and probation ------
def newcomers(train: pd.DataFrame, champion: Path | None, settings: Settings) -> tuple[str, ...]:
    """Catalogue LLMs with labelled rows in the snapshot that the champion has no predictors for (catalogue order);
    () without a champion (the first night trains everything)."""
    from mixllm.catalogue import load_catalogue
    from mixllm.routers.base import read_manifest

    if champion is None:
        return ()
    have = set(read_manifest(champion).get("models", ()))
    labelled = train[pd.to_numeric(train["quality"], errors="coerce").notna()]
    present = set(labelled["model"].dropna().astype(str))
    return tuple(n for n in load_catalogue(settings.catalogue_path).names if n in present and n not in have)


def labelled_decisions(train: pd.DataFrame) -> dict[str, int]:
    """Labelled decisions a policy logged (propensity set, quality known), per LLM."""
    if "propensity" not in train:
        return {}
    logged = pd.to_numeric(train["propensity"], errors="coerce").notna()
    labelled = pd.to_numeric(train["quality"], errors="coerce").notna()
    return {str(k): int(v) for k, v in train[logged & labelled]["model"].value_counts().items()}


def on_probation(router_settings: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """RouterConfig overrides with `names` as the exploration's probation LLMs (validated)."""
    from mixllm.policy import ExplorationConfig

    current = router_settings.get("exploration") or {}
    current = current.model_dump() if hasattr(current, "model_dump") else dict(current)
    try:
        exploration = ExplorationConfig(**{**current, "probation": tuple(names)})
    except ValidationError as e:
        raise ConfigError(f"cannot put {list(names)} on probation with exploration {current}: {e}") from e
    return {**router_settings, "exploration": exploration.model_dump(mode="json")}


def with_probation(config: PipelineConfig, champion: Path | None, train: pd.DataFrame) -> PipelineConfig:
    """The night's config for a full retrain: the champion's LLMs on probation stay so until they have
    `graduation_labels` labelled logged decisions (then the candidate may choose them greedily, and the gates
    judge that). Unchanged when the champion has none on probation."""
    held = tuple(probation_of(champion)) if champion is not None else ()
    if not held:
        return config
    counts = labelled_decisions(train)
    keep = tuple(n for n in held if counts.get(n, 0) < config.graduation_labels)
    return config.model_copy(update={"router": on_probation(config.router, keep)})


def add_newcomers(champion: Path, train: pd.DataFrame, names: tuple[str, ...], config: PipelineConfig,
                  settings: Settings, out_dir: Path) -> Path:
    """The night's candidate when the catalogue gained LLMs: the champion plus `names`, each trained from its own
    snapshot rows alone (`MixLLMRouter.add_llm`: "adding an LLM trains only its models"), saved in `out_dir`.

    Why not a full retrain: a newcomer is known from a few benchmark rows, and one overrated task in its estimate
    made the whole retrained candidate lose the held-out comparison night after night (bench/loop.py new_model),
    so it never got the traffic that would correct it. Here every other LLM's predictors, the encoder, tags and
    bandit are the champion's; each newcomer's per-task prior leans on the other LLMs' (`newcomer_prior_rows`),
    and it goes on probation (`ExplorationConfig.probation`): never chosen greedily, a bounded reserved share of
    the decisions where it is predicted near the best. So the candidate's greedy routing is the champion's and the
    gates, which compare greedy routing on held-out rows and on production traffic, judge exactly what the
    addition changes (nothing greedy); the newcomer's own trial is bounded by probation_share x probation_margin
    predicted utility per decision, and it competes greedily once it has `graduation_labels` labelled decisions."""
    from mixllm.catalogue import load_catalogue
    from mixllm.router import RouterConfig
    from mixllm.routers.registry import load_router

    router = load_router(champion)
    catalogue = load_catalogue(settings.catalogue_path)
    for name in names:
        router.add_llm(catalogue.get(name), train)
        router.predictors.lean_on_others(name, config.newcomer_prior_rows)
    held = tuple(router.exploration.probation) + tuple(n for n in names if n not in router.exploration.probation)
    router.config = RouterConfig.model_validate(on_probation(router.config.model_dump(mode="json"), held))
    _restamp(router, names)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return Path(router.save(out_dir))


def probation_of(router_dir: Path) -> list[str]:
    """The LLMs a saved router has on probation (from its config.json; [] for none or another router class)."""
    import json

    path = Path(router_dir) / "config.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    return list((raw.get("exploration") or {}).get("probation") or ())


def candidate_tags(added: tuple[str, ...], probation: list[str], champion_version: str | None) -> dict[str, str]:
    """Registry tags saying how the candidate was built (a full retrain, or the champion plus newcomers)."""
    tags = {"candidate": f"champion {champion_version} + {', '.join(added)}" if added else "retrained"}
    if probation:
        tags["probation"] = ", ".join(probation)
    return tags


def _restamp(router: Any, added: tuple[str, ...]) -> None:
    """A new router_version for the champion-plus-newcomers (decisions, replay and OPE tell versions apart by it);
    the rest of the champion's manifest (its training data, data_until) stays: the other LLMs were trained then."""
    from datetime import datetime, timezone

    created = datetime.now(timezone.utc)
    parent = router.manifest.get("router_version")
    ident = hashlib.sha256(f"{parent}|{','.join(added)}|{created.isoformat()}".encode()).hexdigest()[:8]
    router.manifest.update(router_version=f"{created:%Y%m%dT%H%M%S}-{ident}", parent_router_version=parent,
                           added_llms=list(added), created=created.isoformat())


def save_candidate(router: Any, prepared: Any, predictors: list[Any], out_dir: Path) -> Path:
    """Install the per-LLM predictors, stamp the manifest and save the artifact that is evaluated and served."""
    router.finish(prepared, predictors)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return Path(router.save(out_dir))


def evaluate_router(router_dir: Path, test: pd.DataFrame, config: PipelineConfig, settings: Settings,
                    train: pd.DataFrame | None = None,
                    baselines: tuple[str, ...] | None = None) -> tuple[Any, dict[str, float]]:
    """Evaluation report of the router in `router_dir` on the held-out slice, and the flat metrics to gate/log.

    The metrics are the report's summary plus the operating point the service actually uses: mean quality and
    cost when routing at the default willingness to pay (``default_wtp/*``), the "quality at the default budget".
    `baselines`: None = `config.baselines`; the champion's evaluation passes () (the gates read no baseline of the
    champion, and the candidate's report already holds them). The held-out prompts' base embeddings go through the
    embedding cache: the sweep and the operating point encode them once, and the next night not at all.
    """
    from mixllm.evaluation import evaluate
    from mixllm.routers.registry import load_router

    router = load_router(router_dir)
    chosen = config.baselines if baselines is None else baselines
    with _evaluation_cache(router):
        report = evaluate(router, test, baselines=chosen, train_log=train, seed=config.seed)
        point = operating_point(router, test, settings.default_willingness_to_pay)
    return report, {**report.summary, **point}


def _evaluation_cache(router: Any) -> Any:
    """The router's encoder reading and writing its embedding cache for the block (a no-op without either)."""
    from contextlib import nullcontext

    encoder = getattr(router, "encoder", None)
    cache = router._cache() if hasattr(router, "_cache") else None  # the router's own cache folder setting
    return encoder.cached(cache) if cache is not None and hasattr(encoder, "cached") else nullcontext()


# --------------------------------------------------------------------------- champion evaluation cache -------
EVALUATION_CACHE_FORMAT = 1  # bump when what a champion's metrics mean changes


def held_out_digest(test: pd.DataFrame) -> str:
    """sha256 of the held-out slice (column names, then every value in row order): the rows both routers are
    evaluated on, as `held_out` returns them. Without ``ts``: files without timestamps are stamped with the time
    they are read (`mixllm.data`), which no evaluation reads."""
    rows = test.drop(columns=["ts"], errors="ignore")
    h = hashlib.sha256("\0".join(map(str, rows.columns)).encode())
    h.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return h.hexdigest()


def router_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics of the router itself: everything but the baselines (which also depend on the training
    snapshot, i.e. on the night, and which the gates read from the candidate only)."""
    return {k: v for k, v in metrics.items() if not k.startswith("baseline/")}


def evaluation_key(version: str, test_digest: str, config: PipelineConfig, settings: Settings) -> str:
    """What a registered version's metrics depend on: the version (immutable) of this registry, the held-out
    rows, the evaluation settings (seed, default willingness to pay, the sweep grid), the encoder backend and
    precisions the router is loaded with (its own and the bulk one: the held-out slice is one bulk call), and this
    mixllm release."""
    import json

    from mixllm import __version__
    from mixllm.embeddings import resolve_backend, resolve_bulk_precision, resolve_precision
    from mixllm.evaluation import default_wtps

    parts = {"format": EVALUATION_CACHE_FORMAT, "registry": [settings.registry_uri, settings.registered_model],
             "version": str(version), "held_out": test_digest, "seed": config.seed,
             "default_wtp": settings.default_willingness_to_pay,
             "wtps": hashlib.sha256(default_wtps().tobytes()).hexdigest(),
             "encoder": [resolve_backend(), resolve_precision(), resolve_bulk_precision()], "mixllm": __version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _evaluation_file(settings: Settings, key: str) -> Path:
    return settings.ensure_home() / "evaluations" / f"{key}.json"


def store_evaluation(settings: Settings, version: str, test_digest: str, config: PipelineConfig,
                     metrics: dict[str, float]) -> Path:
    """Keep a registered version's own metrics on this held-out slice (baselines left out), so the night it is
    the champion does not evaluate it again. Written to a temporary name and renamed (readers never see half)."""
    import json
    import math
    import os

    path = _evaluation_file(settings, evaluation_key(version, test_digest, config, settings))
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else float(v))
             for k, v in router_metrics(metrics).items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": str(version), "held_out": test_digest, "metrics": clean}, indent=1))
    tmp.replace(path)
    return path


def cached_evaluation(settings: Settings, version: str, test_digest: str,
                      config: PipelineConfig) -> dict[str, float] | None:
    """The stored metrics of `version` on this held-out slice and settings, or None (never stored, unreadable)."""
    import json

    path = _evaluation_file(settings, evaluation_key(version, test_digest, config, settings))
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {k: float("nan") if v is None else float(v) for k, v in stored["metrics"].items()}


def champion_evaluation(champion_dir: Path, version: str | None, test: pd.DataFrame, config: PipelineConfig,
                        settings: Settings) -> tuple[dict[str, float], bool]:
    """The champion's metrics on the held-out slice and whether they came from the cache: stored ones when this
    version was evaluated on the same rows and settings before (as a candidate, or as the champion of an earlier
    night), else evaluated now (router only: the gates compare the candidate with the champion's own figures)
    and stored. Without a `version` (a champion directory given by hand) it is always evaluated."""
    digest = held_out_digest(test)
    if version is not None:
        hit = cached_evaluation(settings, version, digest, config)
        if hit is not None:
            return hit, True
    metrics = router_metrics(evaluate_router(champion_dir, test, config, settings, baselines=())[1])
    if version is not None:
        store_evaluation(settings, version, digest, config, metrics)
    return metrics, False


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
             run_name: str, champion_metrics: dict[str, float] | None = None,
             extra_tags: dict[str, str] | None = None) -> str:
    """Log the run and register the candidate as a new version (always, so the UI can compare failures too)."""
    from mixllm.catalogue import load_catalogue
    from mixllm.registry import Registry

    params = {"router": config.router, "n_train_rows": len(train), "n_train_queries": train["query_id"].nunique(),
              "max_train_queries_per_task": config.max_train_queries_per_task,
              "max_test_queries_per_task": config.max_test_queries_per_task, "baselines": list(config.baselines),
              "landing": [str(p) for p in config.resolved_landing()], "seed": config.seed,
              "feedback": config.feedback.model_dump(mode="json"), "ope": config.ope.model_dump(mode="json")}
    tags = {"gate_verdict": "passed" if verdict.passed else "failed", "gate_reason": verdict.reason[:4900],
            "compared_with_champion": champion_version or "none", **(extra_tags or {})}
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


def log_timings(version: str, timings: dict[str, float], settings: Settings) -> None:
    """Log a night's stage seconds (``timing/<stage>_s``) on the registered version's MLflow run, after the fact:
    registry and delivery are themselves stages, so the full set is known only once they are done."""
    from mixllm.registry import Registry

    reg = Registry(settings)
    run_id = reg.client.get_model_version(reg.name, str(version)).run_id
    reg.client.log_batch(run_id, metrics=[_metric(f"timing/{stage}_s", seconds)
                                          for stage, seconds in timings.items()])


def _metric(key: str, value: float) -> Any:
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


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
