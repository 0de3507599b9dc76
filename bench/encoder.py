"""The encoder on torch vs ONNX Runtime (fp32, int8): speed, embedding drift and routing quality, ONE run.

Measures, in one process on this machine:
- export cost: the dynamo ONNX export of the bundled MiniLM and the int8 dynamic quantisation (a fresh cache);
- single-query latency p50/p99 and batch-64 throughput per backend, in interleaved rounds (so a busy neighbour
  slows every backend alike), torch and ONNX Runtime on the same number of threads;
- embedding drift vs torch on the test prompts of both datasets (max |diff|, min and mean cosine);
- routing quality: the router trained ONCE per dataset on torch (RouterBench sample train split; LLMRouter train
  split with its catalogue), then the test split evaluated with the same predictors and the encoder swapped to each
  backend: AIQ per backend, its delta vs torch, and the share of (query, willingness-to-pay) decisions unchanged;
- RSS of a fresh process that loads the saved RouterBench router's encoder on each backend and encodes one query.
The verdict: a backend may become the default only if |AIQ delta| <= 0.001 on both datasets and it is faster.
Writes bench/results/encoder.json and the `encoder` section of BENCHMARKS.md.

Usage: nice python bench/encoder.py [--epochs 1] [--reps 100] [--threads 1,2] [--no-write]
       nice python bench/encoder.py --backends torch,onnx-fp32,torch-bf16 --no-export-cost  (a narrower run)
       nice python bench/encoder.py --only bulk [--threads 2] [--backends torch,onnx-fp32] [--bulk-prompts 256]
(--only bulk: training-time throughput only, on long bundled prompts, into the encoder-bulk markers.)
(--epochs: the routers' fine-tuning epochs; the library default is 1, so the comparison uses the real router.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AIQ_TOLERANCE = 0.001
BACKENDS = (("torch", "torch", "fp32"), ("onnx-fp32", "onnx", "fp32"), ("onnx-int8", "onnx", "int8"),
            ("torch-bf16", "torch", "bf16"),  # bf16: torch autocast (AMX / AVX512-BF16 matmuls on CPUs with them)
            ("hybrid", "hybrid", "fp32"))  # one query on ONNX fp32, batches on torch at the bulk precision (auto)
# dataset -> (catalogue, train source, test source, reference LLM), as bench/quality.py and bench/tune.py use them.
DATASETS = {"routerbench": ("routerbench", "data/routerbench", "data/routerbench", "gpt-4-1106-preview"),
            "llmrouter": ("llmrouter", "data/llmrouter/llmrouter_train.csv.gz", "data/llmrouter/llmrouter_test.csv.gz",
                          "llama-3.1-nemotron-51b-instruct")}


def _load(source: str, split: str):
    from mixllm.data import load_routerbench, load_training_log

    path = ROOT / source
    return load_routerbench(path, split) if path.is_dir() else load_training_log(path)


def _encoders(max_len: int, truncation: str):
    """The encoders over ONE torch model (the same weights), keyed by label; each runs at its own precision at
    every batch size (bulk precision = its precision), so a row is what its label says."""
    from mixllm.embeddings import QueryEncoder

    base = QueryEncoder.base(max_len, truncation, backend="torch")
    return {label: QueryEncoder(base.model, base.weights_id, backend=b, precision=p, bulk_precision=_bulk(b, p))
            for label, b, p in BACKENDS}


def _bulk(backend: str, precision: str) -> str | None:
    """The bulk precision that keeps an encoder at `precision` whatever the batch ("fp32" for int8: unused);
    hybrid keeps the library's (auto: bf16 batches on CPUs with bf16)."""
    return None if backend == "hybrid" else "bf16" if precision == "bf16" else "fp32"


def _select(labels: list[str]) -> None:
    """Time only these backends (torch, the reference, always): a narrower run on a busy machine."""
    global BACKENDS
    unknown = set(labels) - {b[0] for b in BACKENDS}
    if unknown:
        raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {[b[0] for b in BACKENDS]}")
    BACKENDS = tuple(b for b in BACKENDS if b[0] == "torch" or b[0] in labels)


def export_cost(model) -> dict[str, float]:
    from mixllm.onnx_encoder import export

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        out = {"export_fp32_s": export(model, fp32, "fp32")}
        out["quantise_int8_s"] = export(model, Path(tmp) / "model-int8.onnx", "int8", fp32_source=fp32)
        out["size_fp32_mb"] = fp32.stat().st_size / 2**20
        out["size_int8_mb"] = (Path(tmp) / "model-int8.onnx").stat().st_size / 2**20
    return out


def speed(encoders: dict, prompts: list[str], reps: int, threads: int, rounds: int = 5) -> dict[str, dict]:
    """Latency of single queries and batch-64 throughput on `threads` intra-op threads (torch and ONNX Runtime),
    backends interleaved round by round."""
    import torch

    torch.set_num_threads(threads)
    for enc in encoders.values():
        enc.threads, enc._onnx = threads, None  # a fresh ONNX Runtime session on this many threads
    lat: dict[str, list[float]] = {k: [] for k in encoders}
    qps: dict[str, list[float]] = {k: [] for k in encoders}
    batch = prompts[:64]
    for enc in encoders.values():  # warm-up: sessions built, first-call costs paid
        for p in prompts[:10]:
            enc._embed([p], 64, False)
        enc._embed(batch, 64, False)
    for r in range(rounds):
        for label, enc in encoders.items():
            for i in range(reps // rounds):
                p = prompts[(r * reps + i) % len(prompts)]
                t0 = time.perf_counter()
                enc._embed([p], 64, False)
                lat[label].append(time.perf_counter() - t0)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 2.0:
                enc._embed(batch, 64, False)
                n += len(batch)
            qps[label].append(n / (time.perf_counter() - t0))
    out = {}
    for label in encoders:
        xs = sorted(lat[label])
        out[label] = {"single_p50_ms": 1e3 * statistics.median(xs), "single_p99_ms": 1e3 * xs[int(0.99 * (len(xs) - 1))],
                      "batch64_qps": statistics.median(qps[label])}
    return out


def bulk(encoders: dict, prompts: list[str], threads: int, batch_sizes: tuple[int, ...] = (32, 64, 128),
         rounds: int = 3) -> dict[str, dict]:
    """Training-time encoding: `prompts` (long, mostly truncated at the router's 128 tokens, as the nightly encodes
    them) through `_embed` per backend and batch size, rounds interleaved; median queries/s and CPU seconds per
    query of this process (the wall clock on a shared machine measures the neighbours too)."""
    import torch

    torch.set_num_threads(threads)
    for enc in encoders.values():
        enc.threads, enc._onnx = threads, None
        enc._embed(prompts[:8], 8, False)  # sessions built outside the timing
    qps: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _ in range(rounds):
        for bs in batch_sizes:
            for label, enc in encoders.items():
                key = f"{label}@{bs}"
                t0, c0 = time.perf_counter(), time.process_time()
                enc._embed(prompts, bs, False)
                wall, used = time.perf_counter() - t0, time.process_time() - c0
                qps.setdefault(key, []).append(len(prompts) / wall)
                cpu.setdefault(key, []).append(1e3 * used / len(prompts))
                print(f"bulk {threads} threads {key}: {len(prompts) / wall:.1f} q/s, {1e3 * used / len(prompts):.1f} "
                      f"CPU ms/q", flush=True)
    return {k: {"qps": statistics.median(v), "cpu_ms_per_query": statistics.median(cpu[k]), "n_prompts": len(prompts)}
            for k, v in qps.items()}


def bulk_markdown(doc: dict) -> str:
    """The bulk-encode table (training-time throughput per backend and batch size, relative to torch at 64)."""
    lines = [f"Bulk encoding, measured {doc['measured']} (load average {doc['load_avg_start']:.1f} -> "
             f"{doc['load_avg_end']:.1f}) by `bench/encoder.py --only bulk`: {doc['n_prompts']} distinct prompts of "
             f"the bundled RouterBench train split ({doc['mean_tokens']:.0f} tokens on average after truncation to 128, "
             f"{100 * doc['share_truncated']:.0f}% at 128), `_embed` as the nightly's encode stage calls it "
             "(longest first), backends and batch sizes interleaved over "
             f"{doc['rounds']} rounds, medians:", "",
             "| threads | backend @ batch | queries/s | CPU ms per query | CPU vs torch@64 |", "| --- | --- | --- | --- | --- |"]
    for n, rows in doc["bulk"].items():
        ref = rows["torch@64"]["cpu_ms_per_query"]
        for key, r in rows.items():
            lines.append(f"| {n} | {key} | {r['qps']:.1f} | {r['cpu_ms_per_query']:.1f} | "
                         f"{r['cpu_ms_per_query'] / ref:.2f}x |")
    return "\n".join(lines)


def main_bulk(args: argparse.Namespace) -> int:
    """`--only bulk`: the training-time throughput table alone (bench/results/encoder_bulk.json and the
    encoder-bulk part of the encoder section)."""
    from mixllm.data import load_routerbench

    threads = [int(t) for t in args.threads.split(",")]
    encoders = {k: v for k, v in _encoders(128, "tail").items() if k in args.backends.split(",")}
    prompts = sorted(dict.fromkeys(load_routerbench(ROOT / "data" / "routerbench", "train")["prompt"]))
    prompts = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))[:args.bulk_prompts]]
    tok = encoders["torch"].model.tokenizer
    lens = np.array([len(tok(p, truncation=True, max_length=128)["input_ids"]) for p in prompts])
    doc = {"measured": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "load_avg_start": os.getloadavg()[0],
           "n_prompts": len(prompts), "mean_tokens": float(lens.mean()), "share_truncated": float((lens >= 128).mean()),
           "rounds": args.rounds, "versions": _versions(),
           "bulk": {str(t): bulk(encoders, prompts, t, tuple(int(b) for b in args.batch_sizes.split(",")),
                                 rounds=args.rounds) for t in threads}}
    doc["load_avg_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder_bulk.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    md = bulk_markdown(doc)
    print(md)
    if not args.no_write:
        _write_section(ROOT / "BENCHMARKS.md", md, "encoder-bulk")
    return 0


def drift(encoders: dict, prompts: list[str]) -> dict[str, dict[str, float]]:
    ref = encoders["torch"]._embed(prompts, 64, False)
    out = {}
    for label, enc in encoders.items():
        if label == "torch":
            continue
        e = enc._embed(prompts, 64, False)
        cos = (ref * e).sum(1)
        out[label] = {"max_abs_diff": float(np.abs(ref - e).max()), "min_cosine": float(cos.min()),
                      "mean_cosine": float(cos.mean()), "n_prompts": len(prompts)}
    return out


def routing(dataset: str, epochs: int, workdir: Path) -> tuple[dict, Path, list[str]]:
    """Train once with the library's defaults (bulk calls at the bulk precision: bf16 on CPUs with it), evaluate
    the test split with each backend's encoder, at its own precision for every batch size, over the same
    predictors."""
    from mixllm import replay
    from mixllm.catalogue import load_catalogue
    from mixllm.embeddings import QueryEncoder
    from mixllm.evaluation import default_wtps, evaluate
    from mixllm.router import MixLLMRouter, RouterConfig
    from mixllm.testset import TestSet

    catalogue, train_src, test_src, reference = DATASETS[dataset]
    train, test = _load(train_src, "train"), _load(test_src, "test")
    t0 = time.perf_counter()
    os.environ["MIXLLM_ENCODER_BACKEND"] = "torch"
    router = MixLLMRouter(RouterConfig(seed=0, progress=False, epochs=epochs), load_catalogue(catalogue)).fit(train)
    del os.environ["MIXLLM_ENCODER_BACKEND"]
    train_s = time.perf_counter() - t0
    trained = router.encoder
    ts = TestSet.from_log(test)
    out: dict = {"train_s": train_s, "n_test_queries": ts.n, "reference": reference, "backends": {}}
    choices = {}
    for label, backend, precision in BACKENDS:
        enc = QueryEncoder(trained.model, trained.weights_id, backend=backend, precision=precision,
                           bulk_precision=_bulk(backend, precision))
        enc.truncation = router.config.truncation
        t0 = time.perf_counter()
        enc._embed(ts.prompts[:2], 64, False)  # exports the fine-tuned weights (cached by digest)
        export_s = time.perf_counter() - t0
        router.encoder = enc
        t0 = time.perf_counter()
        report = evaluate(router, test, reference=reference, baselines=())
        eval_s = time.perf_counter() - t0
        _, choices[label] = router.sweep(replay.predict_test(router, ts), default_wtps())
        m = report.policies["router"].metrics
        out["backends"][label] = {"aiq": m["aiq"], "quality_at_25pct_cost": m["quality_at_25pct_cost"],
                                  "first_use_export_s": export_s, "evaluate_s": eval_s}
    for label in out["backends"]:
        row = out["backends"][label]
        row["aiq_delta"] = row["aiq"] - out["backends"]["torch"]["aiq"]
        row["same_decisions"] = float(np.mean(np.asarray(choices[label]) == np.asarray(choices["torch"])))
    router.encoder = trained
    t0 = time.perf_counter()
    saved = router.save(workdir / dataset)  # writes the default precision's export beside the weights
    out["save_s"] = time.perf_counter() - t0
    for _, backend, precision in [b for b in BACKENDS if b[1] == "onnx"]:  # both exports in the folder, so the
        # RSS probe never needs torch
        QueryEncoder(trained.model, trained.weights_id, backend=backend, precision=precision).save(saved / "encoder")
    return out, saved, ts.prompts


def rss(router_dir: Path, prompt: str) -> dict[str, float]:
    """Peak RSS (MiB) of a fresh process that loads the saved encoder on each backend and encodes one query, then
    two (hybrid: both engines)."""
    code = ("import sys; from mixllm.embeddings import QueryEncoder; "
            "e = QueryEncoder.load(sys.argv[1], backend=sys.argv[2], precision=sys.argv[3]); e.encode([sys.argv[4]]); "
            "e.encode([sys.argv[4], sys.argv[4] + '?']); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(int(hwm) / 1024, 'torch' in sys.modules)")  # VmHWM: ru_maxrss survives fork+exec
    out = {}
    for label, backend, precision in BACKENDS:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        res = subprocess.run([sys.executable, "-c", code, str(router_dir / "encoder"), backend, precision, prompt],
                             capture_output=True, text=True, env=env, check=True)
        mib, torch_loaded = res.stdout.split()[-2:]
        out[label] = {"rss_mib": float(mib), "torch_imported": torch_loaded == "True"}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts timed (torch and ONNX Runtime)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--only", choices=("all", "bulk"), default="all",
                    help="bulk: only the training-time (bulk encode) throughput table")
    ap.add_argument("--backends", default=None, help="backends timed (torch always; default: all, --only bulk: "
                    "torch,onnx-fp32)")
    ap.add_argument("--no-export-cost", action="store_true", help="skip timing a fresh export + int8 quantisation")
    ap.add_argument("--bulk-prompts", type=int, default=256, help="--only bulk: prompts per timed pass")
    ap.add_argument("--rounds", type=int, default=3, help="--only bulk: interleaved rounds")
    ap.add_argument("--batch-sizes", default="32,64,128", help="--only bulk: batch sizes timed")
    args = ap.parse_args()

    from mixllm.telemetry import go_offline

    go_offline()
    if args.only == "bulk":
        args.backends = args.backends or "torch,onnx-fp32"
        return main_bulk(args)
    if args.backends:
        _select(args.backends.split(","))
    threads = [int(t) for t in args.threads.split(",")]
    t_all = time.perf_counter()
    doc: dict = {"measured": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": platform.machine(),
                 "cores": len(os.sched_getaffinity(0)), "threads": threads, "epochs": args.epochs,
                 "load_avg_start": os.getloadavg()[0], "versions": _versions(),
                 "bulk_precision": __import__("mixllm.embeddings").embeddings.resolve_bulk_precision()}
    encoders = _encoders(128, "tail")  # the router's defaults (RouterConfig.max_seq_length / truncation)
    if not args.no_export_cost:
        doc["export"] = export_cost(encoders["torch"].model)
        print("export", doc["export"], flush=True)
    test_prompts = {d: list(dict.fromkeys(_load(DATASETS[d][2], "test")["prompt"])) for d in DATASETS}
    short = [p for p in test_prompts["routerbench"] if 20 <= len(p) < 400]  # as bench/serve.py: no truncation
    doc["speed"] = {str(t): speed(encoders, short, args.reps, t) for t in threads}
    print("speed", doc["speed"], flush=True)
    import torch

    torch.set_num_threads(1)  # the rest is not timed: one thread each suffers least from the shared cores
    for enc in encoders.values():
        enc.threads, enc._onnx = 1, None
    os.environ["MIXLLM_ENCODER_THREADS"] = "1"
    doc["drift"] = {d: drift(encoders, ps) for d, ps in test_prompts.items()}
    print("drift", doc["drift"], flush=True)
    doc["routing"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for d in DATASETS:
            doc["routing"][d], saved[d], _ = routing(d, args.epochs, Path(tmp))
            print(d, doc["routing"][d], flush=True)
        doc["rss"] = rss(saved["routerbench"], short[0])
    doc["load_avg_end"] = os.getloadavg()[0]
    doc["total_s"] = time.perf_counter() - t_all
    doc["verdict"] = verdict(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    md = markdown(doc)
    print(md)
    if not args.no_write:
        _write_section(ROOT / "BENCHMARKS.md", md)
    return 0


def verdict(doc: dict) -> dict:
    """Per ONNX precision: within the AIQ tolerance on both datasets, and faster than torch on both speed axes."""
    out = {}
    for label in [b[0] for b in BACKENDS[1:] if b[0] in doc["speed"][next(iter(doc["speed"]))]]:
        deltas = {d: r["backends"][label]["aiq_delta"] for d, r in doc["routing"].items()}
        within = all(abs(v) <= AIQ_TOLERANCE for v in deltas.values())
        faster = all(sp[label]["single_p50_ms"] < sp["torch"]["single_p50_ms"]
                     and sp[label]["batch64_qps"] > sp["torch"]["batch64_qps"] for sp in doc["speed"].values())
        out[label] = {"aiq_within_tolerance": within, "faster": faster, "eligible": within and faster,
                      "aiq_deltas": deltas}
    eligible = [k for k in out if out[k]["eligible"]]
    last = doc["speed"][max(doc["speed"], key=int)]
    out["chosen"] = min(eligible, key=lambda k: last[k]["single_p50_ms"]) if eligible else "torch"
    return out


def markdown(doc: dict) -> str:
    sp, ex, v = doc["speed"], doc.get("export"), doc["verdict"]
    lines = [f"Measured {doc['measured']} on {doc['machine']} ({doc['cores']} cores, shared: load average "
             f"{doc['load_avg_start']:.1f} at start, {doc['load_avg_end']:.1f} at end) by `bench/encoder.py`; "
             "torch and ONNX Runtime on the same intra-op thread count; MiniLM at the router's settings "
             "(128 tokens, tail truncation). Backends timed in interleaved rounds.", "",
             f"**Default chosen: {v['chosen']}** (eligible = |AIQ delta| <= {AIQ_TOLERANCE} on both datasets and "
             "faster than torch on single-query p50 and batch-64 throughput at every thread count).", "",
             "| threads | backend | single p50 (ms) | single p99 (ms) | batch-64 (queries/s) | p50 vs torch | "
             "throughput vs torch |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, rows in sp.items():
        t = rows["torch"]
        for label, s in rows.items():
            lines.append(f"| {n} | {label} | {s['single_p50_ms']:.2f} | {s['single_p99_ms']:.2f} | "
                         f"{s['batch64_qps']:.0f} | {s['single_p50_ms'] / t['single_p50_ms']:.2f}x | "
                         f"{s['batch64_qps'] / t['batch64_qps']:.2f}x |")
    lines += ["", "Embedding drift vs torch (test prompts, batched as in training):", "",
              "| dataset | backend | prompts | max abs diff | min cosine | mean cosine |", "| --- | --- | --- | --- | --- | --- |"]
    for d, rows in doc["drift"].items():
        for label, r in rows.items():
            lines.append(f"| {d} | {label} | {r['n_prompts']} | {r['max_abs_diff']:.2e} | {r['min_cosine']:.5f} | "
                         f"{r['mean_cosine']:.6f} |")
    lines += ["", f"Routing quality: router trained once per dataset on torch ({doc['epochs']} fine-tuning epoch(s), "
              f"library defaults otherwise: bulk encoding in {doc.get('bulk_precision', 'fp32')}), test split "
              "evaluated with the encoder swapped, each at its own precision (same predictors):", "",
              "| dataset | backend | AIQ | AIQ delta | quality @25% cost | decisions unchanged | within 0.001 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for d, r in doc["routing"].items():
        for label, b in r["backends"].items():
            lines.append(f"| {d} ({r['n_test_queries']} q) | {label} | {b['aiq']:.4f} | {b['aiq_delta']:+.4f} | "
                         f"{100 * b['quality_at_25pct_cost']:.1f}% | {100 * b['same_decisions']:.1f}% | "
                         f"{'yes' if abs(b['aiq_delta']) <= AIQ_TOLERANCE else 'NO'} |")
    rss_cells = "not measured in this run" if "rss" not in doc else ", ".join(
        f"{k} {r['rss_mib']:.0f} MiB{' (torch imported)' if r['torch_imported'] else ' (no torch)'}"
        for k, r in doc["rss"].items())
    export = "not timed in this run" if ex is None else (
        f"fp32 dynamo export {ex['export_fp32_s']:.1f} s ({ex['size_fp32_mb']:.0f} MB), int8 quantisation "
        f"{ex['quantise_int8_s']:.1f} s ({ex['size_int8_mb']:.0f} MB)")
    lines += ["", f"Export (training-time, once per encoder weights; cached by weights digest): {export}. "
              "Router save with the export: "
              + ", ".join(f"{d} {r['save_s']:.1f} s" for d, r in doc["routing"].items())
              + f". Training (torch, bulk precision {doc.get('bulk_precision', 'fp32')}): " + ", ".join(f"{d} {r['train_s']:.0f} s" for d, r in doc["routing"].items())
              + ".", "", doc.get("note", ""), "", f"Peak RSS of a process loading the saved encoder and encoding one query, then two: {rss_cells}.", "",
              f"Total {doc['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib import metadata

    return {p: metadata.version(p) for p in ("torch", "onnx", "onnxruntime", "onnxscript", "tokenizers")}


def _write_section(path: Path, body: str, marker: str = "encoder") -> None:
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: markers {start} / {end} not found; add them at the end of the file")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
