"""Delivery stages, as plain functions: package a Bento -> deploy -> smoke test -> roll back when that fails.

The Prefect subflow `mixllm_flows.delivery.deliver` composes them for the nightly, promote and rollback flows alike.
Nothing here knows where a source checkout is: the Bento is assembled from the *installed* packages (`mixllm` and
the service package `mixllm_bento`, located by name without importing it: the library never imports the service),
so a pipeline run from a wheel packages the same code it runs. Each stage returns a `StageResult` a person reads in
the run log; only registry I/O raises (retried by the flow).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from pydantic import BaseModel, ConfigDict

from mixllm.config import Settings
from mixllm.exceptions import MixLLMError, RegistryError
from mixllm.pipeline import PipelineConfig

SERVICE_PACKAGE = "mixllm_bento"  # bento/ in a checkout, installed under this name (pyproject's package-dir)


class StageResult(BaseModel):
    """What a deploy / smoke / package stage did, in words a person reads in the run log."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    action: str
    message: str


# ----------------------------------------------------------------------------------------- package ----------
def package_dir(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pinned_requirements(dist: str = "mixllm") -> list[str]:
    """``name==version`` of `dist`'s dependencies and theirs (extras followed), as installed in this environment.

    Why not the checkout's requirements.lock: a wheel does not carry it. The installed set is what this pipeline
    run tested, so the Bento reinstalls exactly that (in a ``make setup`` venv it equals the lock's runtime part).
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(dist, "")]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            found = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency that is not installed here is not needed to serve
        if canonicalize_name(name) != canonicalize_name(dist):
            pins[canonicalize_name(found.metadata["Name"])] = found.version
        for raw in found.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            todo += [(canonicalize_name(req.name), e) for e in ("", *req.extras)]
    return [f"{n}=={v}" for n, v in sorted(pins.items())]


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    return env


def package(version: str, settings: Settings, config: PipelineConfig) -> StageResult:
    """`bentoml build` of the service with the champion inside: a Bento that serves exactly `version` wherever it
    is deployed (no registry needed), tagged and labelled with it. Redeploying an older Bento tag is a rollback.

    The build context is a temporary folder holding the installed `mixllm` and service packages, their pinned
    requirements and the router artifact under `champion_router/`, so a run never writes outside its home."""
    if not config.build_bento:
        return StageResult(ok=True, action="skipped", message="Bento build skipped: build_bento is false")
    source = config.bento_source or package_dir(SERVICE_PACKAGE)
    bentofile = source / "bentofile.yaml" if source else None
    if bentofile is None or not bentofile.is_file():
        return StageResult(ok=False, action="skipped",
                           message=f"Bento build skipped: {bentofile or SERVICE_PACKAGE + '/bentofile.yaml'} not "
                                   f"found (the service package {SERVICE_PACKAGE} is not installed)")
    env = _env(settings)
    with tempfile.TemporaryDirectory(prefix="mixllm-bento-") as tmp:
        context = Path(tmp)
        spec = _bento_context(source, bentofile, context, _router_dir_for(settings, version))
        proc = _bentoml_build(spec, context, version, settings, env)
    if isinstance(proc, str):
        return StageResult(ok=False, action="failed", message=f"bentoml build could not run: {proc}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return StageResult(ok=False, action="failed",
                           message=f"bentoml build failed (exit {proc.returncode}): {' | '.join(tail)}")
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return StageResult(ok=True, action="built",
                       message=f"built Bento {tag} (serves version {version}) in {env['BENTOML_HOME']}")


def _bentoml_build(spec: Path, context: Path, version: str, settings: Settings,
                   env: dict[str, str]) -> subprocess.CompletedProcess[str] | str:
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    name = (yaml.safe_load(spec.read_text(encoding="utf-8")) or {}).get("name", "mixllm-router")
    # A retry of this task (or a re-promoted version) rebuilds the same tag: replace it, never fail on it. Only
    # then: a `bentoml` command costs a second or more of start-up, and a night's new version is never there yet.
    if _bento_in_store(env, name, version):
        subprocess.run([bentoml_cli, "delete", "-y", f"{name}:v{version}"], capture_output=True, env=env,
                       timeout=120)
    cmd = [bentoml_cli, "build", "-f", str(spec), "--version", f"v{version}", "--label",
           f"champion_version={version}", "--label", f"registered_model={settings.registered_model}",
           "-o", "tag", str(context)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=context, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)


def _bento_in_store(env: dict[str, str], name: str, version: str) -> bool:
    """Whether the local Bento store (BentoML's layout: <BENTOML_HOME>/bentos/<name>/<version>) holds the tag.
    Unsure (no BENTOML_HOME in `env`) counts as yes: the delete is then run as before."""
    home = env.get("BENTOML_HOME")
    return home is None or (Path(home) / "bentos" / name.lower() / f"v{version}").exists()


def _bento_context(source: Path, bentofile: Path, context: Path, router_dir: Path) -> Path:
    """Copy the service package, `mixllm` and the champion's artifact into `context`; returns the bentofile written
    there, with the pinned requirements and the artifact (the service serves a bundled router when it finds one)."""
    from mixllm.serving.settings import BUNDLED_ROUTER_DIRNAME

    spec = yaml.safe_load(bentofile.read_text(encoding="utf-8"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source, context / SERVICE_PACKAGE, ignore=ignore)
    shutil.copytree(Path(__file__).resolve().parent, context / "mixllm", ignore=ignore)
    (context / "requirements.txt").write_text("\n".join(pinned_requirements()) + "\n", encoding="utf-8")
    spec["python"] = {**(spec.get("python") or {}), "requirements_txt": "requirements.txt"}
    shutil.copytree(router_dir, context / BUNDLED_ROUTER_DIRNAME)
    spec["include"] = [*spec.get("include", []), f"{BUNDLED_ROUTER_DIRNAME}/**"]
    out = context / "bentofile.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return out


def _router_dir_for(settings: Settings, version: str) -> Path:
    from mixllm.registry import Registry

    return Registry(settings).router_dir(version)


# ----------------------------------------------------------------------------------------- deploy, smoke ----
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
    v = r.json().get("source_version")  # the registry version the service loaded
    return None if v is None else str(v)


def smoke_test(version: str, settings: Settings, config: PipelineConfig) -> StageResult:
    """Route one real prompt through what now serves; a decision naming a catalogue model is a pass.

    With a service URL: POST /route on the live service. Without: load the champion from the registry with the
    same loader the service uses and route in-process (proves the registered artifact loads and routes).
    """
    if config.service_url:
        return _smoke_live(version, config)
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


def _smoke_live(version: str, config: PipelineConfig) -> StageResult:
    url = (config.service_url or "").rstrip("/")
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


# ----------------------------------------------------------------------------------------- rollback ---------
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
