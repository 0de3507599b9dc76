"""The wheel runs on its own: built from this checkout, installed into a fresh virtual environment outside it, then
`mixllm pipeline run` (small slice, packaged sample data) and `mixllm serve` (until /readyz) from an empty folder.

The fresh environment reuses the project venv's installed dependencies through a ``.pth`` line (a path line only:
the project venv's own ``.pth`` files, among them the editable install's finder that maps `mixllm` to this
checkout, are not run), so only the wheel's own files are new. Every Python process of the test (the CLI, the
Prefect flow, the ephemeral Prefect server, `bentoml build`, the service and its workers) runs that environment's
interpreter with an audit hook that records any file opened under the checkout outside ``.venv/``: the test fails
on the first such read, which is the proof that nothing reads the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV_PY = Path(sys.executable)
SOURCES = ("pyproject.toml", "setup.py", "README.md", "mixllm", "flows", "bento")
SCRIPTS = ("bentoml", "prefect")  # console scripts of dependencies that mixllm starts by path (next to its python)
AUDIT_HOOK = '''
import os, sys
_repo, _venv, _log = {repo!r}, {venv!r}, {log!r}
def _hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        p = os.path.abspath(os.fsdecode(args[0]))
        if (p == _repo or p.startswith(_repo + os.sep)) and not p.startswith(_venv + os.sep):
            with open(_log, "a") as fh:  # the log lives outside the checkout: no recursion
                fh.write(p + "\\n")
sys.addaudithook(_hook)
'''


def _run(cmd: list[str], timeout: float = 300, **kw: object) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-5000:]}"
    return proc


def _build_wheel(work: Path) -> Path:
    """`pip wheel` of a copy of the sources (a build writes build/ and egg-info next to them: not into the repo)."""
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    _run([str(VENV_PY), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(work / "dist"), str(src)])
    (wheel,) = (work / "dist").glob("mixllm-*.whl")
    return wheel


def _fresh_venv(work: Path, wheel: Path) -> Path:
    """A venv outside the checkout with the wheel installed and the project venv's packages visible."""
    venv = work / "venv"
    _run([str(VENV_PY), "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([str(VENV_PY.with_name("uv")), "pip", "install", "-q", "--no-deps", "--python", str(py), str(wheel)])
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "zz_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    (site / "sitecustomize.py").write_text(AUDIT_HOOK.format(repo=str(REPO), venv=str(REPO / ".venv"),
                                                             log=str(work / "checkout-reads.log")), "utf-8")
    for name in SCRIPTS:  # the same entry points, started by this venv's python
        body = VENV_PY.with_name(name).read_text(encoding="utf-8").split("\n", 1)[1]
        (venv / "bin" / name).write_text(f"#!{py}\n{body}", encoding="utf-8")
        (venv / "bin" / name).chmod(0o755)
    return venv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Installed:
    work: Path
    wheel: Path
    venv: Path
    cwd: Path  # an empty folder outside the checkout: every command starts there
    env: dict[str, str]
    setup_seconds: float

    def mixllm(self, *args: str) -> list[str]:
        return [str(self.venv / "bin" / "mixllm"), *args]

    def checkout_reads(self) -> list[str]:
        log = self.work / "checkout-reads.log"
        return sorted(set(log.read_text().splitlines())) if log.is_file() else []


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.is_relative_to(REPO)
    t0 = time.monotonic()
    wheel = _build_wheel(work)
    venv = _fresh_venv(work, wheel)
    empty = work / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXLLM_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"PATH": f"{venv / 'bin'}:{env.get('PATH', '')}", "MIXLLM_HOME": str(work / "home"),
                "PREFECT_HOME": str(work / "prefect"), "BENTOML_HOME": str(work / "bentoml"),
                "PYTHONUNBUFFERED": "1"})
    return Installed(work=work, wheel=wheel, venv=venv, cwd=empty, env=env, setup_seconds=time.monotonic() - t0)


def test_the_wheel_carries_the_flows_the_service_and_the_defaults(installed: Installed) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for path in ("mixllm_flows/nightly.py", "mixllm_flows/delivery.py", "mixllm_flows/prefect.yaml",
                 "mixllm_bento/service.py", "mixllm_bento/bentofile.yaml", "mixllm/defaults/gates.yaml",
                 "mixllm/defaults/contracts/interaction_log.json", "mixllm/defaults/contracts/feedback.json",
                 "mixllm/defaults/sample/README.md", "mixllm/defaults/sample/mbpp_train.csv.gz",
                 "mixllm/catalogues/routerbench.yaml"):
        assert path in names, path
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "mixllm").rglob("__init__.py")}
    assert {p for p in packages if f"{p}/__init__.py" not in names} == set(), "a mixllm subpackage is missing"
    venv, cwd, env = installed.venv, installed.cwd, installed.env
    where = json.loads(_run([str(venv / "bin" / "python"), "-c", "import json, mixllm, mixllm_flows, mixllm_bento; "
                             "print(json.dumps([m.__file__ for m in (mixllm, mixllm_flows, mixllm_bento)]))"],
                            cwd=cwd, env=env).stdout)
    assert all(not Path(f).is_relative_to(REPO) for f in where), where
    assert installed.setup_seconds < 90, f"wheel build + venv took {installed.setup_seconds:.0f} s"


def test_pipeline_run_from_an_empty_folder_registers_a_champion(installed: Installed) -> None:
    env = {**installed.env, "MIXLLM_PIPELINE_ROUTER": json.dumps(
        {"epochs": 0, "progress": False, "predictor": {"n_estimators": 20, "min_child_samples": 3}})}
    proc = _run(installed.mixllm("pipeline", "run", "--max-train-queries-per-task", "12",
                                 "--max-test-queries-per-task", "8"), timeout=600, cwd=installed.cwd, env=env)
    out = proc.stdout
    assert "promoted version 1 to champion" in out, out[-3000:]
    assert "built Bento mixllm-router:v1" in out, out[-3000:]  # the package stage, from the installed packages
    bento = Path(installed.env["BENTOML_HOME"]) / "bentos" / "mixllm-router" / "v1"
    src = bento / "src"
    assert (src / "mixllm_bento" / "service.py").is_file() and (src / "champion_router" / "manifest.json").is_file()
    assert "lightgbm==4.7.0" in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert list(installed.cwd.iterdir()) == [], "the run wrote into the folder it was started from"
    assert installed.checkout_reads() == []


def test_serve_from_an_empty_folder_answers_readyz(installed: Installed) -> None:
    port = _free_port()
    log_path = installed.work / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(installed.mixllm("serve", "--port", str(port)), cwd=installed.cwd, env=installed.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline, status = time.monotonic() + 240, None
            while time.monotonic() < deadline and status != 200:
                assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                try:
                    status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
                except httpx.HTTPError:
                    time.sleep(1)
            assert status == 200, f"/readyz never answered 200:\n{log_path.read_text()[-3000:]}"
            r = httpx.post(f"http://127.0.0.1:{port}/route", json={"prompt": "Name the Red Planet."}, timeout=60)
            assert r.status_code == 200 and r.json()["source_version"] == "1", r.text
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert installed.checkout_reads() == []
