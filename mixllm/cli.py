"""The `mixllm` command line (Typer). Scripts depend on these commands: keep names and flags stable.

Each command imports its stage module inside the function, so `mixllm --help` never pays for torch or MLflow.
Errors the library raises on purpose (`MixLLMError`) are printed as one line and exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from mixllm.exceptions import MixLLMError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="mixllm: route every query to the LLM with the best answer per dollar.")
pipeline_app = typer.Typer(no_args_is_help=True, help="The nightly pipeline (Prefect): run once or schedule.")
app.add_typer(pipeline_app, name="pipeline")
shadow_app = typer.Typer(no_args_is_help=True, help="Shadow decisions of the challenger on live traffic.")
app.add_typer(shadow_app, name="shadow")
canary_app = typer.Typer(no_args_is_help=True, help="The canary of the challenger: its verdict on live feedback.")
app.add_typer(canary_app, name="canary")


# ---------------------------------------------------------------- data: ingest, quarantine (store.py) --------

def _store(url: str | None):
    from mixllm.store import Store

    return Store(url)


def _console():
    """A rich console at least 140 columns wide, so tables stay readable when piped or logged."""
    from rich.console import Console

    return Console(width=max(Console().width, 140))


@app.command()
def ingest(
    paths: list[str] = typer.Argument(
        ..., help="Log files or folders of them: canonical .csv/.csv.gz/.jsonl/.parquet or RouterBench wide CSV."),
    store: str | None = typer.Option(
        None, "--store", help="SQLAlchemy URL (default: MIXLLM_STORE_URL or SQLite in home)."),
    feedback: bool = typer.Option(False, "--feedback", help="The files hold feedback rows, not interaction logs."),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON lines instead of a table."),
) -> None:
    """Validate files against the data contracts and land them: bad rows to quarantine, repeats counted once."""
    import json
    from pathlib import Path

    from rich.table import Table

    reports = _store(store).ingest(paths, kind="feedback" if feedback else "log")
    if as_json:
        for r in reports:
            typer.echo(json.dumps(r.as_dict()))
        return
    table = Table(title="mixllm ingest")
    for col in ("file", "batch", "rows", "accepted", "quarantined", "duplicate", "rows/s"):
        table.add_column(col, justify="left" if col in ("file", "batch") else "right", no_wrap=col != "file")
    for r in reports:
        table.add_row(Path(r.path).name, r.batch_id, str(r.rows_read), str(r.accepted), str(r.quarantined),
                      str(r.duplicate),
                      "seen file" if r.seen_before else f"{r.rows_read / r.seconds:,.0f}" if r.seconds > 0 else "-")
    total = [sum(getattr(r, f) for r in reports) for f in ("rows_read", "accepted", "quarantined", "duplicate")]
    table.add_row("total", "", *map(str, total), "")
    _console().print(table)
    for r in reports:  # extra columns are kept, not refused: say so, with any likely typo
        for note in r.notes:
            _console().print(f"{Path(r.path).name}: {note}", markup=False, highlight=False)


@app.command()
def quarantine(
    batch: str | None = typer.Option(None, "--batch", help="Only rows of this ingest batch id."),
    limit: int = typer.Option(50, "--limit", min=0, help="Show at most this many rows (0: all)."),
    store: str | None = typer.Option(None, "--store", help="SQLAlchemy URL of the store."),
    as_json: bool = typer.Option(False, "--json", help="Print rows as JSON lines (reason and the raw row)."),
) -> None:
    """List quarantined rows with the expectation that failed and why (--batch takes an id or its prefix)."""
    from pathlib import Path

    from rich.table import Table

    df = _store(store).quarantine(batch_id=batch, limit=limit + 1 if limit else None)
    more = bool(limit) and len(df) > limit
    df = df.iloc[:limit] if limit else df
    if as_json:
        typer.echo(df.to_json(orient="records", lines=True, date_format="iso", force_ascii=False), nl=False)
        return
    table = Table(title=f"mixllm quarantine ({len(df)} rows shown)")
    for col in ("batch", "file:row", "column", "reason"):
        table.add_column(col, overflow="fold", no_wrap=col == "batch")
    for r in df.itertuples():
        table.add_row(r.batch_id[:12], f"{Path(r.source).name}:{r.row_number}", r.column_name, r.reason)
    _console().print(table)
    if more:
        typer.echo(f"more rows than --limit {limit}: use --limit 0 to list all", err=True)


@app.command()
def batches(
    store: str | None = typer.Option(None, "--store", help="SQLAlchemy URL of the store."),
) -> None:
    """List ingest batches: file, digest and accepted / quarantined / duplicate counts."""
    from pathlib import Path

    from rich.table import Table

    df = _store(store).batches()
    table = Table(title=f"mixllm ingest batches ({len(df)})")
    for col in ("batch", "file", "sha256", "finished (UTC)", "rows", "accepted", "quarantined", "duplicate"):
        table.add_column(col, overflow="fold", no_wrap=col in ("batch", "sha256"))
    for r in df.itertuples():
        table.add_row(r.batch_id[:12], f"{Path(r.source).name} ({r.kind})", (r.file_digest or "")[:12],
                      f"{r.finished_at:%Y-%m-%d %H:%M:%S}",
                      str(r.rows_read), str(r.accepted), str(r.quarantined), str(r.duplicate))
    _console().print(table)



# ---------------------------------------------------------------- router: train, route (router.py) -----------

def _router_options(base: str | None, pairs: list[str] | None, **flags) -> dict:
    """Router options from an optional JSON file, then `--option key=value` pairs (values read as JSON when they
    parse, else as text), then the explicit flags (None = keep)."""
    import json
    from pathlib import Path

    from mixllm.exceptions import ConfigError

    try:
        options = json.loads(Path(base).read_text()) if base else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read router config {base} ({e}); pass a JSON object of options") from e
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes key=value, got {pair!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options | {k: v for k, v in flags.items() if v is not None}


@app.command()
def train(
    data: list[str] = typer.Option(..., "--data", help="Log files (any accepted format); repeat for several."),
    out: str = typer.Option(..., "--out", help="Directory to write the router artifact to."),
    router: str = typer.Option("mixllm", "--router", help="Registered router to train (mixllm, plain_router, "
                               "single, random, oracle, task_prior, knn, lgbm, tfidf_lgbm, or your own)."),
    config: str | None = typer.Option(None, "--config", help="JSON file of the router's options (mixllm: "
                                      "RouterConfig fields)."),
    option: list[str] | None = typer.Option(None, "--option", help="One router option key=value (repeat), e.g. "
                                            "model=gpt-4-1106-preview for single, k=20 for knn."),
    epochs: int | None = typer.Option(None, "--epochs", min=0, help="Encoder fine-tuning epochs (mixllm)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (fine-tuning, LightGBM, random draws)."),
    tag_enhanced: bool | None = typer.Option(None, "--tag-enhanced/--no-tag-enhanced",
                                             help="Fine-tune the encoder with the tag losses (mixllm; default on)."),
    max_seq_length: int | None = typer.Option(None, "--max-seq-length", help="Encoder max tokens per prompt."),
    catalogue: str | None = typer.Option(None, "--catalogue", help="LLM catalogue YAML, or a bundled name: routerbench (default), llmrouter."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a registered router from interaction logs (validated; bad rows are skipped) and save it to --out."""
    import json
    import time

    from mixllm.catalogue import load_catalogue
    from mixllm.data import load_training_log
    from mixllm.routers.registry import router_class

    cls = router_class(router)
    options = _router_options(config, option, epochs=epochs, tag_enhanced=tag_enhanced,
                              max_seq_length=max_seq_length, progress=False if quiet else None)
    seed = options.pop("seed", 0) if seed is None else seed
    start = time.perf_counter()
    log = load_training_log(data)
    model = cls.create(seed=seed, catalogue=load_catalogue(catalogue), **options).fit(log)
    path = model.save(out)
    summary = {"router": cls.name, "router_version": model.version, "out": str(path), "rows": len(log),
               "queries": model.manifest.get("n_queries"), "models": list(model.models),
               "seconds": round(time.perf_counter() - start, 1)}
    if getattr(model, "tags", None) is not None:
        summary["tags"] = list(model.tags)
    typer.echo(json.dumps(summary))


@app.command()
def route(
    router_dir: str = typer.Option(..., "--router", help="Router artifact directory (from `mixllm train`)."),
    wtp: str = typer.Option(..., "--wtp", help="Willingness to pay, USD per unit of quality; comma-separated list."),
    allowed_models: str | None = typer.Option(None, "--allowed-models", help="Comma-separated model names."),
    max_cost: float | None = typer.Option(None, "--max-cost", min=0, help="Most a query may cost (USD)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Prompts embedded per batch."),
) -> None:
    """Route JSON lines {"id", "prompt"} from stdin; one JSON line per prompt and wtp on stdout (greedy, no state change).

    A line that is not valid JSON, lacks a prompt, or cannot be routed gives {"line": N, "id": ..., "error": ...}
    in its place, and the stream goes on (good lines are never lost); the exit status is then 1.
    """
    import json

    from mixllm.exceptions import RoutingError
    from mixllm.routers.registry import load_router
    from mixllm.serving.engine import Routed, ServingEngine
    from mixllm.serving.schemas import RouteRequest, constraints_of

    try:
        wtps = [float(w) for w in wtp.split(",") if w.strip()]
    except ValueError as e:
        raise RoutingError(f"--wtp must be numbers separated by commas, got {wtp!r}") from e
    if not wtps or any(not w > 0 for w in wtps):
        raise RoutingError(f"--wtp needs positive numbers, got {wtp!r}")
    names = tuple(m.strip() for m in allowed_models.split(",")) if allowed_models else None
    constraints = constraints_of(names, max_cost)
    router = load_router(router_dir)
    if router.catalogue is not None:  # a baseline without one checks names against its models when routing
        router.catalogue.check_known(names or ())
    engine = ServingEngine.for_router(router)  # the service's decisions, without its state (no log, no learning)
    failed = False

    def flush(items: list) -> None:
        """Decide every (line, wtp) of a batch in one engine call (one encoder pass); print in line order."""
        nonlocal failed
        asked = [(n, r, w) for n, r in items if "error" not in r for w in wtps]
        results = engine.decide_batch([RouteRequest(prompt=r["prompt"], willingness_to_pay=w, constraints=constraints,
                                                    request_id=None if r["id"] is None else str(r["id"]))
                                       for _, r, w in asked]) if asked else []
        out: dict[int, list[dict]] = {}
        for (n, r, w), res in zip(asked, results):
            if isinstance(res, Routed):
                d = res.decision
                out.setdefault(n, []).append({"id": r["id"], "wtp": w, "model": d.model,
                                              "router_version": d.router_version,
                                              "candidates": [c.model_dump() for c in d.candidates]})
            elif isinstance(res, RoutingError):  # this prompt cannot be routed; the stream goes on
                out.setdefault(n, []).append({"line": n, "id": r["id"], "wtp": w, "error": str(res)})
            else:
                raise res
        for n, r in items:
            for obj in ([r] if "error" in r else out[n]):
                failed |= "error" in obj
                sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    pending: list = []
    for n, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise ValueError('expected an object with a non-empty string "prompt"')
            pending.append((n, {"id": obj.get("id"), "prompt": obj["prompt"]}))
        except ValueError as e:
            pending.append((n, {"line": n, "id": None, "error": f"line {n}: {e}"}))
        if len(pending) >= batch_size:
            flush(pending)
            pending = []
    flush(pending)
    if failed:
        raise typer.Exit(1)



# ---------------------------------------------------------------- evaluation: evaluate (evaluation.py) -------

@app.command()
def evaluate(
    router: str | None = typer.Option(None, "--router", help="Saved router directory, any registered class "
                                      "(omit: baselines only)."),
    data: list[str] = typer.Option(..., "--data", help="Test log files (any accepted format); repeat for several."),
    json_out: str = typer.Option(..., "--json", help="Write the full report (JSON) here."),
    plot: str | None = typer.Option(None, "--plot", help="Write the frontier plot (PNG) here."),
    markdown: str | None = typer.Option(None, "--markdown", help="Write the markdown table here."),
    wtp: list[float] | None = typer.Option(None, "--wtp", help="Willingness-to-pay sweep values (repeat); "
                                           "default: 121 points from 1e-8 to 1e2 dollars per unit quality."),
    reference: str | None = typer.Option(None, "--reference", help="Reference model (default: most expensive)."),
    train: list[str] | None = typer.Option(None, "--train", help="Train logs for the baselines that learn "
                                           "(task_prior, knn, lgbm, tfidf_lgbm, plain_router, ...; repeat)."),
    baselines: str = typer.Option("single,random,oracle,task_prior", "--baselines",
                                  help="Comma-separated registered router names, e.g. single,random,oracle,"
                                       "task_prior,knn,lgbm,tfidf_lgbm,plain_router (or 'none')."),
    latency: bool = typer.Option(False, "--latency/--no-latency", help="Add the latency-constrained replay."),
    online: bool = typer.Option(False, "--online/--no-online", help="Add the continual-learning replay (frozen "
                                "vs learning from feedback on the same stream)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline, the ablation and the replay."),
) -> None:
    """Replay test logs through a router over a willingness-to-pay sweep, next to baselines; JSON/PNG/markdown."""
    import json
    from pathlib import Path

    from mixllm.data import load_training_log
    from mixllm.evaluation import evaluate as run_evaluation

    from mixllm.replay import LatencyConfig, OnlineConfig

    chosen = () if baselines.strip() in ("", "none") else tuple(b.strip() for b in baselines.split(","))
    model = None
    if router is not None:
        from mixllm.routers.registry import load_router

        model = load_router(router)
    latency_cfg = LatencyConfig(seed=seed) if latency else None
    online_cfg = OnlineConfig(seed=seed) if online else None
    try:
        report = run_evaluation(model, load_training_log(data), wtps=wtp or None, reference=reference,
                                baselines=chosen, train_log=load_training_log(train) if train else None,
                                seed=seed, latency=latency_cfg, online=online_cfg)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(report.to_json(), encoding="utf-8")
    if plot:
        report.plot(plot)
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(report.to_markdown(), encoding="utf-8")
    headline = {k: v for k, v in report.summary.items() if "/" not in k}
    typer.echo(json.dumps({"json": json_out, **{k: round(v, 4) for k, v in headline.items()}}))


# ---------------------------------------------------------------- spend: calibrate (calibrate.py) ----------

@app.command()
def calibrate(
    cost_per_1k: float | None = typer.Option(None, "--target-cost-per-1k-requests", min=0,
                                             help="Hold the expected spend per 1,000 requests (USD) at most this."),
    share: str | None = typer.Option(None, "--target-share", help="Or hold MODEL's share of traffic at most "
                                     "SHARE, written MODEL=SHARE (e.g. gpt-4-1106-preview=0.2)."),
    router_dir: str | None = typer.Option(None, "--router", help="Saved router directory (default: the champion)."),
    data: list[str] | None = typer.Option(None, "--data", help="Log files to calibrate on instead of the store."),
    days: float | None = typer.Option(7.0, "--days", help="Only requests logged in the last DAYS days (store)."),
    conservative: bool = typer.Option(False, "--conservative", help="Hold the target at the interval's upper end."),
    confidence: float = typer.Option(0.95, "--confidence", help="Level of the bootstrap intervals."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the whole curve (JSON) here."),
    store_url: str | None = typer.Option(None, "--store-url", help="Store URL (default: MIXLLM_STORE_URL)."),
) -> None:
    """Pick the willingness to pay that meets a spend target on recent logged traffic (expected spend and quality,
    with intervals); prints one JSON line, exits 1 when no willingness to pay meets the target."""
    import json
    from pathlib import Path

    from mixllm import calibrate as cal
    from mixllm.routers.registry import load_router

    model, max_share = None, None
    if share is not None:
        model, _, value = share.rpartition("=")
        try:
            max_share = float(value)
        except ValueError as e:
            raise typer.BadParameter(f"--target-share must be MODEL=SHARE, got {share!r}") from e
    try:
        target = cal.SpendTarget(cost_per_1k_requests=cost_per_1k, model=model or None, max_share=max_share,
                                 confidence=confidence, conservative=conservative)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    if data:
        from mixllm.data import load_training_log

        logs, days = load_training_log(data), None
    else:
        logs = _store(store_url).logs()
    if router_dir is None:
        from mixllm.config import get_settings
        from mixllm.pipeline import champion_dir

        found = champion_dir(get_settings())
        if found is None:
            raise typer.BadParameter("no champion is registered yet: pass --router DIR")
        router_dir = str(found)
    router = load_router(router_dir)
    result = cal.calibrate(router, cal.recent_traffic(logs, days), target, logs=logs)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result.as_dict(), indent=2, default=float), encoding="utf-8")
    typer.echo(json.dumps(result.as_dict(curve=False), default=float))
    if not result.feasible:
        raise typer.Exit(1)


# ---------------------------------------------------------------- registry: pipeline, promote, rollback ------

def _registry():
    from mixllm.registry import Registry

    return Registry()


def _who(who: str | None) -> str:
    import getpass

    return who or getpass.getuser()


def _follow(version: str, service_url: str | None) -> None:
    """Tell a running service to reload now (it also polls the alias every few seconds)."""
    if not service_url:
        typer.echo("a running service picks the new champion up at its next alias poll (MIXLLM_POLL_SECONDS, 5 s)")
        return
    from mixllm.config import get_settings
    from mixllm.delivery import deploy
    from mixllm.pipeline import load_pipeline_config

    result = deploy(version, get_settings(), load_pipeline_config(service_url=service_url))
    typer.echo(result.message)
    if not result.ok:
        raise typer.Exit(1)


def _installed(package: str) -> None:
    """The flows and the service are packages of this distribution (`mixllm_flows`, `mixllm_bento`), started by
    module name in a child process: found without importing them (the library never imports flows/ or bento/)."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise MixLLMError(f"package {package} is not installed with mixllm: reinstall it (pip install mixllm, or "
                          "`make setup` in a checkout)")


_SERVICE_URL = typer.Option(None, "--service-url", envvar="MIXLLM_PIPELINE_SERVICE_URL",
                            help="Running service to reload at once (POST /admin/reload with MIXLLM_ADMIN_TOKEN).")


@pipeline_app.command("run")
def pipeline_run(
    config: str | None = typer.Option(None, "--config", help="Pipeline YAML (PipelineConfig fields)."),
    max_train_queries_per_task: int | None = typer.Option(None, help="Subsample the training snapshot."),
    max_test_queries_per_task: int | None = typer.Option(None, help="Subsample the held-out slice."),
    service_url: str | None = _SERVICE_URL,
) -> None:
    """Run the nightly flow once, now, on Prefect's ephemeral API (no server needed); prints the versions.

    Default data: the RouterBench sample packaged with mixllm; MIXLLM_PIPELINE_LANDING / _TEST_PATHS or --config
    name other files (`make quickstart` passes a checkout's full data/routerbench/)."""
    import os
    import subprocess
    from pathlib import Path

    _installed("mixllm_flows")
    env = dict(os.environ)
    for key, value in (("MAX_TRAIN_QUERIES_PER_TASK", max_train_queries_per_task),
                       ("MAX_TEST_QUERIES_PER_TASK", max_test_queries_per_task), ("SERVICE_URL", service_url)):
        if value is not None:
            env[f"MIXLLM_PIPELINE_{key}"] = str(value)
    env.setdefault("MIXLLM_HOME", str(Path(".mixllm").resolve()))  # state stays where the user ran the command
    cmd = [sys.executable, "-m", "mixllm_flows.nightly"] + (["--config", str(Path(config).resolve())] if config else [])
    code = subprocess.call(cmd, env=env)
    raise typer.Exit(code)


@pipeline_app.command("schedule")
def pipeline_schedule(
    cron: str = typer.Option("0 2 * * *", help="When to run (cron, in --timezone)."),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA timezone of the cron, e.g. Europe/Paris."),
    pool: str = typer.Option("mixllm-process", help="Prefect process work pool (created when missing)."),
    name: str = typer.Option("nightly", help="Deployment name: a second name (e.g. staging) is a second, "
                             "independent schedule of the same flow."),
    api_url: str | None = typer.Option(None, envvar="PREFECT_API_URL", help="Prefect server API URL."),
) -> None:
    """Register the nightly deployment (mixllm_flows/prefect.yaml) on a Prefect server; a worker on the pool runs it.

    The worker imports the flows from its own Python environment (module entrypoints) and starts in this folder."""
    import importlib.util
    import os
    import subprocess
    from pathlib import Path

    _installed("mixllm_flows")
    if not name or "/" in name:
        raise MixLLMError(f"deployment name {name!r}: must be non-empty and without '/'")
    if not api_url:
        raise MixLLMError("no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) or pass "
                          "--api-url; start one with infra/ scripts or `prefect server start`")
    prefect = str(Path(sys.executable).with_name("prefect"))
    env = {**os.environ, "PREFECT_API_URL": api_url, "MIXLLM_WORKDIR": str(Path.cwd())}
    env.setdefault("MIXLLM_HOME", str(Path(".mixllm").resolve()))  # the worker's runs share this state
    made = subprocess.run([prefect, "work-pool", "create", pool, "--type", "process"], env=env,
                          capture_output=True, text=True)
    if made.returncode != 0 and "already exists" not in (made.stdout + made.stderr):
        raise MixLLMError(f"cannot create work pool {pool!r}: {(made.stderr or made.stdout).strip()[-400:]}")
    # prefect.yaml's schedule with this cron/timezone (passing --cron as well would ADD a second schedule)
    import tempfile

    import yaml

    flows_dir = Path(next(iter(importlib.util.find_spec("mixllm_flows").submodule_search_locations)))
    spec = yaml.safe_load((flows_dir / "prefect.yaml").read_text(encoding="utf-8"))
    for dep in spec["deployments"]:
        if dep["name"] == "nightly":
            dep["name"] = name
            dep["schedules"] = [{"cron": cron, "timezone": timezone, "active": True}]
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "prefect.yaml"
        spec_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        code = subprocess.call([prefect, "--no-prompt", "deploy", "--prefect-file", str(spec_file),
                                "--name", name, "--pool", pool], env=env)
    if code != 0:
        raise typer.Exit(code)
    typer.echo(f"\nscheduled mixllm-nightly/{name} at '{cron}' ({timezone}) on pool {pool!r}.\n"
               f"start a worker:   PREFECT_API_URL={api_url} prefect worker start --pool {pool}\n"
               f"run it now:       PREFECT_API_URL={api_url} prefect deployment run mixllm-nightly/{name}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="Registered version number to make champion."),
    reason: str = typer.Option("manual promotion", help="Why (recorded in the version's tags)."),
    who: str | None = typer.Option(None, help="Who (default: your user name)."),
    service_url: str | None = _SERVICE_URL,
) -> None:
    """Move the `champion` alias to VERSION (gates are not re-checked: this is the human override)."""
    reg = _registry()
    reg.promote(version, reason=reason, who=_who(who))
    typer.echo(f"version {version} of {reg.name} is now champion")
    _follow(version, service_url)


@app.command()
def rollback(
    to: str | None = typer.Option(None, "--to", help="Version to restore (default: the previous champion)."),
    reason: str = typer.Option("manual rollback", help="Why (recorded in the version's tags)."),
    who: str | None = typer.Option(None, help="Who (default: your user name)."),
    service_url: str | None = _SERVICE_URL,
) -> None:
    """Move the `champion` alias back (to the previous champion, or --to VERSION)."""
    reg = _registry()
    before = reg.version_for("champion")
    target = reg.rollback(to, reason=reason, who=_who(who))
    typer.echo(f"champion of {reg.name}: version {before} -> {target}")
    _follow(target, service_url)


@app.command()
def versions(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Every registered router version with its aliases, gate verdict and headline metrics."""
    import json

    from mixllm.config import get_settings
    from mixllm.pipeline import versions_table

    if as_json:
        typer.echo(json.dumps(_registry().versions(), indent=2, default=str))
    else:
        typer.echo(versions_table(get_settings()))



# ---------------------------------------------------------------- operations: shadow, canary, drift ---------

def _version_dir(reg, alias: str, given: str | None):
    """A router directory: the one given, else the registry alias's (downloaded once, cached)."""
    from pathlib import Path

    if given:
        return Path(given)
    if reg.version_for(alias) is None:
        raise MixLLMError(f"no version of {reg.name} has the alias {alias!r}: register a challenger (the nightly "
                          f"pipeline does) or pass --{alias}-dir DIR")
    return reg.router_dir(alias)


@shadow_app.command("report")
def shadow_report(
    hours: float = typer.Option(24.0, "--hours", min=0.01, help="Shadow decisions of the last HOURS hours."),
    ope: bool = typer.Option(True, "--ope/--no-ope", help="Also estimate the challenger's value off-policy on the "
                             "champion's labelled decisions of the same window (loads both routers)."),
    mlflow_run: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the report as an MLflow run "
                                    "(experiment <experiment>-monitoring)."),
    champion_dir: str | None = typer.Option(None, "--champion-dir", help="Champion router dir (default: alias)."),
    challenger_dir: str | None = typer.Option(None, "--challenger-dir", help="Challenger router dir (default: "
                                              "alias)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the report (JSON) here."),
    store_url: str | None = typer.Option(None, "--store-url", help="Store URL (default: MIXLLM_STORE_URL)."),
) -> None:
    """Agreement, predicted quality/cost deltas and the off-policy estimate of the challenger on live traffic."""
    import tempfile
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    from mixllm import shadow
    from mixllm.config import get_settings

    settings = get_settings()
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    store = _store(store_url)
    try:
        rep = shadow.report(shadow.read(store, since), since)
    finally:
        store.dispose()
    reg = _registry() if (mlflow_run or (ope and not (champion_dir and challenger_dir))) else None
    if ope and not challenger_dir and reg.version_for("challenger") is None:
        # the canary may have rolled it back (or promoted it) since: the decisions are still worth reporting
        typer.echo("off-policy estimate skipped: no version has the alias 'challenger' now (rolled back or "
                   "promoted since?); pass --challenger-dir DIR to estimate it", err=True)
        ope = False
    if ope:
        from mixllm.ope import OPEConfig, production_metrics

        rep.ope = production_metrics(settings.model_copy(update={"store_url": store_url or settings.store_url}),
                                     _version_dir(reg, "challenger", challenger_dir),
                                     _version_dir(reg, "champion", champion_dir), OPEConfig(since=since))
    typer.echo(rep.to_text())
    with tempfile.TemporaryDirectory(prefix="mixllm-shadow-") as tmp:
        path = shadow.write(rep, Path(json_out) if json_out else Path(tmp) / "shadow.json")
        if mlflow_run:
            run_id = reg.log_monitoring_run("shadow", rep.metrics(), {"hours": hours, "since": rep.since},
                                            [path], {"challenger": ",".join(rep.challenger_versions) or "none"})
            typer.echo(f"mlflow run: {run_id}")


@canary_app.command("check")
def canary_check(
    apply_verdict: bool = typer.Option(False, "--apply", help="Apply the verdict: promote, or remove the "
                                       "challenger alias (rollback/expiry). Without it: report only."),
    alpha: float = typer.Option(0.025, "--alpha", help="Error rate of a promotion (always-valid mSPRT)."),
    rollback_alpha: float = typer.Option(0.20, "--rollback-alpha", help="Error rate of a rollback."),
    min_labels: int = typer.Option(30, "--min-labels", help="Labelled decisions each arm needs first."),
    max_hours: float = typer.Option(72.0, "--max-hours", help="Undecided this long: expire the canary."),
    exposure_budget: float = typer.Option(0.02, "--exposure-budget", help="Most a challenger not yet shown not "
                                          "worse may serve, as a share of a day's requests (0: no budget)."),
    budget_margin: float = typer.Option(0.05, "--budget-margin", help="Non-inferiority margin at the budget."),
    budget_alpha: float = typer.Option(0.20, "--budget-alpha", help="Chance of clearing a challenger worse by "
                                       "the margin at the budget look."),
    store_url: str | None = typer.Option(None, "--store-url", help="Store URL (default: MIXLLM_STORE_URL)."),
) -> None:
    """The canary's verdict on the live feedback since it started (what the `canary` deployment runs)."""
    import json

    from mixllm import canary
    from mixllm.config import get_settings

    try:
        cfg = canary.CanaryConfig(alpha=alpha, rollback_alpha=rollback_alpha, min_labels=min_labels,
                                  max_hours=max_hours, exposure_budget=exposure_budget or None,
                                  budget_margin=budget_margin, budget_alpha=budget_alpha)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    reg, store = _registry(), _store(store_url)
    try:
        decision = canary.evaluate(reg, store, cfg, get_settings().default_willingness_to_pay)
    finally:
        store.dispose()
    if apply_verdict:
        canary.apply(reg, decision, who=_who(None))
    typer.echo(json.dumps({"verdict": decision.verdict, "reason": decision.reason, "applied": apply_verdict,
                           **{k: v for k, v in decision.evidence().items() if k not in ("verdict", "reason")}},
                          default=str))


@app.command()
def drift(
    config: str | None = typer.Option(None, "--config", help="Drift thresholds YAML (default: packaged)."),
    report_dir: str | None = typer.Option(None, "--report-dir", help="Write drift.html/.png/.json here."),
    mlflow_run: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the report as an MLflow run."),
    router_dir: str | None = typer.Option(None, "--router", help="Router to check (default: the champion)."),
    store_url: str | None = typer.Option(None, "--store-url", help="Store URL (default: MIXLLM_STORE_URL)."),
) -> None:
    """Has the last window of logged traffic drifted from the champion's training data? Prints one JSON line;
    exits 1 on drift (the `drift` deployment also starts the nightly run)."""
    import json
    import tempfile
    from datetime import datetime, timezone
    from pathlib import Path

    from mixllm import drift as D
    from mixllm.config import get_settings
    from mixllm.routers.registry import load_router

    settings = get_settings()
    cfg = D.load_drift_config(config)
    reg = _registry() if (mlflow_run or router_dir is None) else None
    router = load_router(_version_dir(reg, "champion", router_dir))
    store = _store(store_url)
    try:
        logs, feedback = store.logs(), store.feedback()
    finally:
        store.dispose()
    reference, window, start, end = D.split_window(logs, router.manifest.get("data_until"), cfg,
                                                   datetime.now(timezone.utc))
    report = D.monitor(router, reference, window, cfg, settings.default_willingness_to_pay, feedback, start, end,
                       held_out=D.held_out_slice())  # the calibration check's baseline (the nightly's held-out slice)
    out = {**report.metrics(), "drifted": report.drifted, "decided": report.decided, "reasons": report.reasons,
           "note": report.note, "router_version": report.router_version}
    with tempfile.TemporaryDirectory(prefix="mixllm-drift-") as tmp:
        files = D.write_report(report, Path(report_dir) if report_dir else Path(tmp))
        if mlflow_run:
            out["run_id"] = reg.log_monitoring_run(
                "drift", report.metrics(), {"router_version": report.router_version, "window_start": start,
                                            "window_end": end}, list(files.values()),
                {"drifted": report.drifted, "reasons": "; ".join(report.reasons) or "none"})
    typer.echo(json.dumps(out, default=str))
    if report.drifted:
        raise typer.Exit(1)


# ---------------------------------------------------------------- service: serve (bento/) --------------------

@app.command()
def serve(
    router_dir: str | None = typer.Option(None, "--router-dir", envvar="MIXLLM_ROUTER_DIR",
                                          help="Serve this saved router directory instead of the registry alias."),
    alias: str = typer.Option("champion", "--alias", envvar="MIXLLM_ROUTER_ALIAS",
                              help="Registry alias to serve and follow (polled every MIXLLM_POLL_SECONDS)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(3000, "--port", help="TCP port."),
    shadow_sample: float | None = typer.Option(None, "--shadow-sample", min=0, max=1, envvar="MIXLLM_SHADOW_SAMPLE",
                                               help="Share of requests the challenger also decides, off the "
                                               "response path (see `mixllm shadow report`)."),
    canary_share: float | None = typer.Option(None, "--canary-share", min=0, max=1, envvar="MIXLLM_CANARY_SHARE",
                                              help="Share of sessions the challenger routes (see `mixllm canary`)."),
    challenger_dir: str | None = typer.Option(None, "--challenger-dir", envvar="MIXLLM_CHALLENGER_DIR",
                                              help="Challenger router directory instead of the registry alias."),
) -> None:
    """Start the routing service (BentoML): /route, /feedback, /readyz, /metrics, /admin/reload (see README)."""
    import os
    from pathlib import Path

    _installed("mixllm_bento")
    if router_dir is not None:
        path = Path(router_dir).expanduser().resolve()
        if not (path / "manifest.json").is_file():
            raise MixLLMError(f"{path} is not a saved router (no manifest.json); train one with `mixllm train`")
        os.environ["MIXLLM_ROUTER_DIR"] = str(path)
    os.environ["MIXLLM_ROUTER_ALIAS"] = alias
    for key, value in (("MIXLLM_SHADOW_SAMPLE", shadow_sample), ("MIXLLM_CANARY_SHARE", canary_share)):
        if value is not None:
            os.environ[key] = str(value)
    if challenger_dir is not None:
        os.environ["MIXLLM_CHALLENGER_DIR"] = str(Path(challenger_dir).expanduser().resolve())
    from mixllm.config import get_settings

    settings = get_settings()
    os.environ["MIXLLM_HOME"] = str(settings.home)  # the worker may start elsewhere: pin the data folder
    local_db = (settings.registry_uri or "").removeprefix("sqlite:///")
    if router_dir is None and local_db != settings.registry_uri and not Path(local_db).is_file():
        # no local registry yet: say so in one line rather than serve a /readyz that never turns ready
        raise MixLLMError(f"no registry at {settings.registry_uri}: run `mixllm pipeline run` first (it registers a "
                          "champion), point MIXLLM_TRACKING_URI at your registry, or pass --router-dir DIR")
    bentoml = Path(sys.executable).parent / "bentoml"
    args = [str(bentoml), "serve", "mixllm_bento.service:RouterService", "--host", host, "--port", str(port)]
    os.execv(str(bentoml), args)  # replace this process: Ctrl-C / SIGTERM reach the server directly



def main() -> None:
    """Console-script entry point: offline switches first, then one-line errors for `MixLLMError`."""
    from mixllm.telemetry import go_offline

    go_offline()
    try:
        app()
    except MixLLMError as e:
        typer.echo(f"mixllm: error: {e}", err=True)
        sys.exit(2)
