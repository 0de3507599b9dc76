"""What the service tests share: `mixllm serve` as a subprocess on a real SQLite MLflow registry (`Served`,
`start_service`), and a small OpenAI-compatible upstream on loopback (`FakeUpstream`: starlette under uvicorn, real
HTTP, streamed and whole answers, failures on request).

The upstream's behaviour is chosen by a marker in the last user message: ``[upstream:429]`` / ``[upstream:500]``
answer that status with an OpenAI error body, ``[upstream:slow]`` streams 40 chunks 0.1 s apart, ``[upstream:break]``
drops the connection after 3 chunks, ``[upstream:nousage]`` ignores ``stream_options.include_usage``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
UPSTREAM_KEY = "sk-fake-upstream"
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


@dataclass
class Served:
    url: str
    home: Path
    proc: subprocess.Popen
    env: dict[str, str]
    port: int
    store_url: str
    router_version: str
    models: list[str]
    routed: list[str]  # request ids routed by the tests: all must reach the store

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def start(self) -> None:
        """(Re)start `mixllm serve` with this home and port and wait until /readyz answers 200."""
        log = open(self.home / "service.log", "a")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "mixllm"), "serve", "--port", str(self.port)],
                                     cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited {self.proc.returncode}:\n"
                                     f"{(self.home / 'service.log').read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 400, "the service to be ready")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean stop through BentoML's arbiter. SIGKILL: a crash of the arbiter AND its workers (circus
        starts each worker in its own session, so the process group alone would leave the worker serving)."""
        if self.proc.poll() is None:
            import psutil

            workers = psutil.Process(self.proc.pid).children(recursive=True) if sig == signal.SIGKILL else []
            os.killpg(self.proc.pid, sig)
            for w in workers:
                w.kill()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def store(self):
        from mixllm.store import Store

        return Store(self.store_url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()  # None or False: not yet
        if last is not None and last is not False:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def registry(home: Path):
    from mixllm.config import get_settings
    from mixllm.registry import Registry

    return Registry(get_settings(home=home))


def start_service(home: Path, router_dir: Path, upstream_url: str, **env_extra: str) -> Served:
    """`mixllm serve` on a fresh registry whose champion (v1) is `router_dir`, every catalogue model's endpoint
    pointing at `upstream_url`; returns once /readyz answers 200."""
    from mixllm.catalogue import load_catalogue

    cat = load_catalogue()
    cat = cat.model_copy(update={"llms": tuple(m.model_copy(update={"base_url": upstream_url,
                                                                     "api_key_env": "FAKE_LLM_KEY"})
                                               for m in cat.llms)})
    catalogue_path = cat.save(home / "catalogue-with-endpoints.yaml")
    reg = registry(home)
    v1 = reg.log_candidate(router_dir, None, "a" * 64)
    reg.promote(v1, "service test", "pytest")
    port = free_port()
    env = {**os.environ, "MIXLLM_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
           "MIXLLM_ADMIN_TOKEN": TOKEN, "MIXLLM_POLL_SECONDS": "1", "MIXLLM_FORWARD_INTERVAL_SECONDS": "0.2",
           "MIXLLM_STICKY_MARGIN": "1.0", "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool",
           "MIXLLM_CATALOGUE_PATH": str(catalogue_path), "FAKE_LLM_KEY": UPSTREAM_KEY, **env_extra}
    env.pop("MIXLLM_ROUTER_DIR", None)
    env.pop("MIXLLM_STORE_URL", None)
    manifest = json.loads((router_dir / "manifest.json").read_text())
    s = Served(f"http://127.0.0.1:{port}", home, None, env, port,  # type: ignore[arg-type]
               f"sqlite:///{home / 'store.db'}", manifest["router_version"], manifest["models"], [])
    s.start()
    return s


# ------------------------------------------------------------------------------------------ fake upstream ------
class FakeUpstream:
    """An OpenAI-compatible chat endpoint at ``{url}/chat/completions`` (uvicorn in a thread). `seen` holds each
    request's body and whether its key was right; `streams` how each stream ended ("done", "cancelled", "broken")."""

    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.seen: list[dict] = []
        self.streams: list[str] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self.server = self.thread = None
        self.url = ""

    def __enter__(self) -> "FakeUpstream":
        import uvicorn

        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="critical",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the fake upstream to start", every=0.05)
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    async def _chat(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        body = await request.json()
        ok = request.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"
        self.seen.append({"path": request.url.path, "body": body, "ok": ok})
        if not ok:
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
        marker = _marker(body)
        if marker in ("429", "500"):
            return JSONResponse({"error": {"message": f"fake upstream says {marker}", "type": "server_error",
                                           "code": None}}, int(marker))
        model = body.get("model")
        answer = f"answer from {model}"
        if not body.get("stream"):
            return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                                 "model": model, "usage": USAGE,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": answer}}]})
        words = [w + " " for w in answer.split()] if marker != "slow" else [f"w{i} " for i in range(40)]
        usage = (body.get("stream_options") or {}).get("include_usage") and marker != "nousage"
        return StreamingResponse(self._events(model, words, usage, marker), media_type="text/event-stream")

    async def _events(self, model: str, words: list[str], usage: bool, marker: str | None):
        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            c = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(c)}\n\n".encode()

        try:
            yield chunk({"role": "assistant", "content": ""})
            for i, w in enumerate(words):
                if marker == "break" and i == 2:  # after the role chunk and two words
                    self.streams.append("broken")
                    raise ConnectionResetError("fake upstream broke off")
                if marker == "slow":
                    await asyncio.sleep(0.1)
                yield chunk({"content": w})
            yield chunk({}, "stop")
            if usage:
                c = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                     "choices": [], "usage": USAGE}
                yield f"data: {json.dumps(c)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            self.streams.append("done")
        except (asyncio.CancelledError, GeneratorExit):
            self.streams.append("cancelled")
            raise


def _marker(body: dict) -> str | None:
    text = " ".join(str(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
    found = re.search(r"\[upstream:(\w+)\]", text)
    return found.group(1) if found else None
