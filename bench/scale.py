"""Scale: the real nightly flow on a RouterBench-size log (36,497 queries x 11 LLMs), then a night with 5% new rows.

The bundled RouterBench sample (2,225 train queries x 11 LLMs) is scaled up by `synthesise`: copy c >= 1 of a source
query rewrites the question at the prompt's end (what the encoder keeps: truncation "tail") with a lead naming a
practice set, a person and a unique case number, and shifted numbers, so no two prompts are equal and every
embedding differs; each copy inherits its source's per-LLM quality (each 0/1 cell flipped with probability
`--noise`), completion tokens, task, and its cost re-priced for its own prompt length at the catalogue's input
price. So the per-query quality structure (which LLM answers which kind of query) is RouterBench's.

Night 1 lands the whole log and runs `mixllm_flows.nightly.nightly` (the flow `mixllm pipeline run` runs) with its
embedded defaults in a temporary folder: SQLite store, local MLflow, embedding cache in that home, held-out slice =
the bundled RouterBench test split, Bento package built. Night 2 lands 5% new queries (`--new-fraction`) and runs it
again (the champion from night 1 is evaluated beside the candidate). Stage seconds come from the flow's result
(``timings``); queries per second per stage = the night's training queries / the stage's seconds.

Writes bench/results/scale.json and the `scale` section of BENCHMARKS.md. Bars (issue 16): night 1 <= 600 s on
2 cores; night 2 <= 15% of night 1. A smaller --queries run reports its figures and a linear extrapolation, not a
verdict.

Usage: nice python bench/scale.py [--queries 36497] [--router representation=adapter] [--no-write] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ROUTERBENCH_QUERIES = 36_497  # RouterBench's full size (queries, each answered by the same 11 LLMs)
BAR_NIGHT1_S, BAR_NIGHT2_SHARE = 600.0, 0.15
SCALES_WITH_DATA = ("ingest", "snapshot", "encode", "representation", "predictors", "registry")
STAGES = ("ingest", "snapshot", "encode", "representation", "predictors", "evaluation", "registry", "package")
LEADS = ("Practice set", "Quiz", "Homework", "Exam review", "Study card", "Warm-up", "Revision sheet", "Drill")
NAMES = ("Ana", "Bilal", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jules", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas", "Uma", "Viktor", "Wen", "Yara")
_NUMBER = re.compile(r"(?<![\w.])\d{1,4}(?![\w.])")


def vary(prompt: str, uid: int, rng: np.random.Generator) -> str:
    """A new prompt for the same query: its last block (the question: the few-shot examples before it are shared
    by every query of a task) gets a lead with a unique case number and its small numbers shifted."""
    head, sep, question = prompt.rpartition("\n\n")
    question = _NUMBER.sub(lambda m: str(int(m.group()) + int(rng.integers(1, 10))), question)
    lead = f"{LEADS[rng.integers(len(LEADS))]} for {NAMES[rng.integers(len(NAMES))]}, case {uid}: "
    return head + sep + lead + question


def synthesise(source: pd.DataFrame, n_queries: int, start: int, seed: int, noise: float,
               ts: datetime) -> pd.DataFrame:
    """Canonical log rows of synthetic queries `start` .. `start + n_queries - 1`: query i copies source query
    i mod Q (Q = source queries) as copy i // Q (copy 0 is the source itself)."""
    from mixllm.catalogue import estimate_tokens, load_catalogue

    catalogue = load_catalogue()
    src = source.assign(_key=source["query_id"] + "\0" + source["prompt"])
    queries = src.drop_duplicates("_key")[["_key", "query_id", "prompt", "task", "prompt_tokens"]]
    queries = queries.sort_values("_key").reset_index(drop=True)
    models = sorted(src["model"].unique())
    cells = src.groupby(["_key", "model"])[["quality", "cost_usd", "completion_tokens"]].first()
    rng = np.random.default_rng([seed, start])
    ids = np.arange(start, start + n_queries)
    pick, copy = ids % len(queries), ids // len(queries)
    chosen = queries.iloc[pick].reset_index(drop=True)
    prompts = [p if c == 0 else vary(p, uid, rng) for p, c, uid in zip(chosen["prompt"], copy, ids)]
    tokens = np.array([estimate_tokens(p) for p in prompts], float)
    frames = []
    for model in models:
        got = cells.xs(model, level="model").reindex(chosen["_key"])
        quality = got["quality"].to_numpy(float)
        flip = (copy > 0) & (rng.random(n_queries) < noise) & np.isin(quality, (0.0, 1.0))
        price = catalogue.get(model).input_price_per_token
        cost = got["cost_usd"].to_numpy(float) + (tokens - chosen["prompt_tokens"].to_numpy(float)) * price
        frames.append(pd.DataFrame({
            "query_id": [q if c == 0 else f"{q}~{c}" for q, c in zip(chosen["query_id"], copy)],
            "prompt": prompts, "model": model, "quality": np.where(flip, 1.0 - quality, quality),
            "cost_usd": np.maximum(cost, 0.0), "prompt_tokens": tokens.astype(int),
            "completion_tokens": got["completion_tokens"].to_numpy(float), "task": chosen["task"].to_numpy(),
            "ts": ts.isoformat()}))
    return pd.concat(frames, ignore_index=True)


def _cpu_clocks() -> list:
    """Make every stage clock of the flow (mixllm.timing.StageClock, as bound in the pipeline and the flows) also
    keep the process's CPU seconds per stage, and return the list the clocks of a run are collected in. Why: the
    machine's 2 cores are shared, so a stage's wall seconds include other people's work; its CPU seconds are what
    it asks of the cores. The flow's own figures (wall) are unchanged; stages run one after another (the two
    evaluations of a night overlap each other, inside one stage), so process CPU per stage is that stage's."""
    from contextlib import contextmanager

    import importlib

    import mixllm.timing

    clocks: list = []

    class CPUClock(mixllm.timing.StageClock):
        def __init__(self) -> None:
            super().__init__()
            self.cpu: dict[str, float] = {}
            clocks.append(self)

        @contextmanager
        def time(self, stage: str):
            start = time.process_time()
            try:
                with super().time(stage):
                    yield
            finally:
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - start

    for name in ("mixllm.timing", "mixllm_flows.nightly", "mixllm_flows.train"):  # wherever the flow binds it
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "StageClock"):
            module.StageClock = CPUClock
    return clocks


def _night(name: str, landing: Path, overrides: dict, clocks: list) -> dict:
    """One run of the real nightly flow on `landing`: its result, wall and CPU seconds (per stage too) and the
    load average at start and end."""
    from mixllm_flows.nightly import nightly

    load = os.getloadavg()
    clocks.clear()
    t0, cpu0 = time.perf_counter(), _cpu_s()
    out = nightly(overrides={**overrides, "landing": [str(landing)]})
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    stage_cpu: dict[str, float] = {}
    for clock in clocks:
        for stage, v in clock.cpu.items():
            stage_cpu[stage] = round(stage_cpu.get(stage, 0.0) + v, 1)
    print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU, load at start {load[0]:.1f}; timings {out.get('timings')}",
          flush=True)
    return {"wall_s": wall, "cpu_s": round(cpu, 1), "load_at_start": [round(v, 2) for v in load],
            "load_at_end": [round(v, 2) for v in os.getloadavg()], "timings": out.get("timings") or {},
            "stage_cpu_s": stage_cpu,
            "version": out.get("version"), "gate_passed": out.get("gate_passed"), "promoted": out.get("promoted"),
            "message": out.get("message"), "champion_evaluation": out.get("champion_evaluation"),
            "encoder": _encoder_settings()}


def _encoder_settings() -> dict:
    """The encoder settings the night ran with, resolved (env or library default; bulk "auto" on this CPU)."""
    from mixllm.embeddings import resolve_backend, resolve_bulk_precision, resolve_precision

    return {"backend": resolve_backend(), "precision": resolve_precision(), "bulk_precision": resolve_bulk_precision(),
            "env": {k: v for k, v in os.environ.items() if k.startswith("MIXLLM_ENCODER_")}}


def _latency(test_files: list[Path], n: int = 200) -> dict:
    """Single-query latency of the champion the nights leave (a RouterBench-size kNN memory): the predictor step
    (features, kNN quality and length models of every LLM, from a computed embedding) and router.predict (encoder
    included), median over `n` held-out prompts, in ms."""
    from mixllm.config import get_settings
    from mixllm.data import load_training_log
    from mixllm.pipeline import champion_dir
    from mixllm.routers.registry import load_router

    router = load_router(champion_dir(get_settings()))
    prompts = load_training_log(test_files).drop_duplicates("query_id")["prompt"].tolist()[:n]
    emb, tokens = router.embed(prompts) if hasattr(router, "embed") else router.encoder.encode(prompts), \
        np.array([float(len(p) // 4) for p in prompts])
    router._predict_emb(emb[:1], tokens[:1])  # warm-up: kNN groups, single-row predictors
    step, full = [], []
    for i in range(len(prompts)):
        t0 = time.perf_counter()
        router._predict_emb(emb[i:i + 1], tokens[i:i + 1])
        step.append(time.perf_counter() - t0)
    for p in prompts[:50]:
        t0 = time.perf_counter()
        router.predict([p])
        full.append(time.perf_counter() - t0)
    groups = [len(g.names) for _, gs in router.predictors._knn_groups() for g in gs]
    return {"predictor_step_p50": round(1e3 * float(np.median(step)), 3),
            "router_predict_p50": round(1e3 * float(np.median(full)), 2), "knn_groups": groups,
            "load": round(os.getloadavg()[0], 2)}


def _cpu_s() -> float:
    """CPU seconds of this process (all threads) and its finished children: on a shared machine the wall clock
    measures the other work too, the CPU seconds what this night asked of the 2 cores (the ephemeral Prefect
    server, a child still running, is not in it)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _stage_rows(night: dict, queries: int) -> dict:
    """{stage: (seconds, queries per second)}; stages the flow did not report are left out."""
    t = night["timings"]
    rows = {s: t[s] for s in STAGES if s in t}
    rows.update({s: v for s, v in t.items() if s not in rows and s != "total"})
    rows["total"] = t.get("total", night["wall_s"])
    return {s: (round(v, 1), round(queries / v, 1) if v > 0 else None) for s, v in rows.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=ROUTERBENCH_QUERIES, help="Night 1 queries (smoke: 2000).")
    ap.add_argument("--new-fraction", type=float, default=0.05, help="Night 2's new queries / night 1's.")
    ap.add_argument("--noise", type=float, default=0.03, help="Chance a copied 0/1 quality cell is flipped.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--router", action="append", default=[], metavar="KEY=VALUE",
                    help="RouterConfig override for both nights (JSON value), e.g. representation=\"adapter\".")
    ap.add_argument("--pipeline", action="append", default=[], metavar="KEY=VALUE",
                    help="PipelineConfig override (JSON value), e.g. max_test_queries_per_task=100.")
    ap.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a removed temp folder).")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-write", action="store_true", help="Do not write scale.json nor BENCHMARKS.md.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mixllm-scale-") as tmp:
        work = args.keep or Path(tmp)
        doc = run(args, work)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        _write_section(ROOT / "BENCHMARKS.md", _markdown(doc))
    print(_markdown(doc))
    return 0


def _kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    """Both nights in `work` (home, landing files, Prefect home): the figures of scale.json."""
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update({"MIXLLM_HOME": str(work / "home"), "PREFECT_HOME": str(work / "prefect")})
    for var in ("MIXLLM_STORE_URL", "MIXLLM_TRACKING_URI", "MIXLLM_REGISTRY_URI", "MIXLLM_ARTIFACT_ROOT"):
        os.environ.pop(var, None)  # the embedded defaults, under the work folder
    from mixllm.data import load_routerbench, routerbench_files
    from mixllm.telemetry import go_offline

    go_offline()
    source = load_routerbench(ROOT / "data" / "routerbench", "train")
    n1, n2 = args.queries, max(1, round(args.queries * args.new_fraction))
    t0 = time.perf_counter()
    first = synthesise(source, n1, 0, args.seed, args.noise, datetime(2026, 12, 1, tzinfo=timezone.utc))
    second = synthesise(source, n2, n1, args.seed, args.noise, datetime(2026, 12, 2, tzinfo=timezone.utc))
    assert first["prompt"].nunique() == n1 and pd.concat([first, second])["prompt"].nunique() == n1 + n2
    landing = work / "landing"
    landing.mkdir(exist_ok=True)
    first.to_parquet(landing / "night1.parquet", index=False)
    second.to_parquet(landing / "night2.parquet", index=False)
    generate_s = time.perf_counter() - t0
    print(f"synthesised {n1} + {n2} queries x {first['model'].nunique()} LLMs in {generate_s:.1f} s", flush=True)
    overrides = {"test_paths": [str(p) for p in routerbench_files(ROOT / "data" / "routerbench", "test")],
                 "router": {"progress": False, **_kv(args.router)}, **_kv(args.pipeline)}
    clocks = _cpu_clocks()
    night1 = _night("night 1", landing / "night1.parquet", overrides, clocks)
    night2 = _night("night 2", landing / "night2.parquet", overrides, clocks)
    latency = _latency(routerbench_files(ROOT / "data" / "routerbench", "test"))
    return _verdicts({
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} ({os.cpu_count()} cores)", "command": " ".join(sys.argv),
        "queries": {"night1": n1, "night2_new": n2, "llms": int(first["model"].nunique()),
                    "rows": {"night1": len(first), "night2_new": len(second)}},
        "overrides": overrides, "generate_s": round(generate_s, 1), "champion_latency_ms": latency,
        "nights": {"night1": {**night1, "stages": _stage_rows(night1, n1)},
                   "night2": {**night2, "stages": _stage_rows(night2, n1 + n2)}}})


def _verdicts(doc: dict) -> dict:
    n1 = doc["queries"]["night1"]
    t1 = doc["nights"]["night1"]["stages"]["total"][0]
    t2 = doc["nights"]["night2"]["stages"]["total"][0]
    scale = ROUTERBENCH_QUERIES / n1
    full = n1 >= ROUTERBENCH_QUERIES
    idle = {}
    for night in ("night1", "night2"):  # CPU seconds: stages that grow with the data x scale, the others as they are
        cpu = doc["nights"][night].get("stage_cpu_s", {})
        idle[night] = round(sum(v * (scale if s in SCALES_WITH_DATA else 1.0) for s, v in cpu.items()) / 2, 1)
    doc["bars"] = {
        "night1_s": t1, "night1_extrapolated_s": round(t1 * scale, 1), "night2_s": t2,
        "night2_extrapolated_s": round(t2 * scale, 1), "night2_share": round(t2 / t1, 3),
        "idle_estimate_full_size_s": idle,
        "night1_pass": (t1 <= BAR_NIGHT1_S) if full else None,
        "night2_pass": (t2 <= BAR_NIGHT2_SHARE * t1) if full else None,
        "extrapolation": "linear in queries (fixed costs such as the flow start and the held-out evaluation "
                         "do not grow, so it overstates them)" if not full else None}
    return doc


def _markdown(doc: dict) -> str:
    q, b = doc["queries"], doc["bars"]
    n1, n2 = doc["nights"]["night1"], doc["nights"]["night2"]
    others = {k: v for k, v in doc["overrides"].items() if k not in ("router", "test_paths")}

    def verdict(ok: bool | None, what: str) -> str:
        return f"not judged at this size ({what})" if ok is None else ("PASS" if ok else "FAIL") + f" ({what})"

    lines = [f"Measured {doc['measured']} on {doc['machine']} by `{doc['command']}`: the real nightly flow "
             f"(`mixllm_flows.nightly`, embedded defaults in a temp folder) on {q['night1']:,} synthetic queries x "
             f"{q['llms']} LLMs ({q['rows']['night1']:,} rows) scaled up from the bundled RouterBench sample, then "
             f"night 2 with {q['night2_new']:,} new queries. Load average at start: night 1 "
             f"{n1['load_at_start'][0]}, night 2 {n2['load_at_start'][0]} (2 cores shared with other work).",
             "", f"Overrides: `{json.dumps(doc['overrides']['router'])}` (router); held-out = RouterBench test "
             f"split; other pipeline settings `{json.dumps(others)}`.", "",
             f"**Bar night 1 <= 600 s: {verdict(b['night1_pass'], '%.0f s' % b['night1_s'])}**; "
             f"**night 2 <= 15% of night 1: {verdict(b['night2_pass'], '%.0f%%' % (100 * b['night2_share']))}**."]
    if b["extrapolation"]:
        idle = b["idle_estimate_full_size_s"]
        lines += ["", f"Extrapolated to {ROUTERBENCH_QUERIES:,} queries from the CPU seconds per stage (stages "
                  f"{', '.join(SCALES_WITH_DATA)} x {ROUTERBENCH_QUERIES / q['night1']:.1f}, evaluation and package "
                  f"as measured; / 2 cores, i.e. an idle machine using both cores throughout, a lower bound): "
                  f"night 1 ~{idle['night1']:.0f} s, night 2 ~{idle['night2']:.0f} s "
                  f"({100 * idle['night2'] / max(idle['night1'], 1e-9):.0f}% of night 1). Linear in wall seconds "
                  f"at this load: night 1 ~{b['night1_extrapolated_s']:.0f} s, night 2 "
                  f"~{b['night2_extrapolated_s']:.0f} s."]
    stages = list(dict.fromkeys([*n1["stages"], *n2["stages"]]))
    lines += ["", "| stage | night 1 wall s | night 1 CPU s | night 1 queries/s | night 2 wall s | night 2 CPU s "
              "| night 2 queries/s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    cpu1, cpu2 = n1.get("stage_cpu_s", {}), n2.get("stage_cpu_s", {})
    cpu1.setdefault("total", n1.get("cpu_s")), cpu2.setdefault("total", n2.get("cpu_s"))
    for s in stages:
        a, c = n1["stages"].get(s, (None, None)), n2["stages"].get(s, (None, None))
        cell = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
        lines.append(f"| {s} | {cell(a[0])} | {cell(cpu1.get(s))} | {cell(a[1])} | {cell(c[0])} | "
                     f"{cell(cpu2.get(s))} | {cell(c[1])} |")
    lines += ["", f"CPU seconds of the bench process (all threads; 2 cores give at most 2 per wall second): night 1 "
              f"{n1['cpu_s']:,} s over {n1['wall_s']:,.0f} s wall (load {n1['load_at_start'][0]} -> "
              f"{n1['load_at_end'][0]}), night 2 {n2['cpu_s']:,} s over {n2['wall_s']:,.0f} s (load "
              f"{n2['load_at_start'][0]} -> {n2['load_at_end'][0]}).",
              "", f"Single-query latency of the champion after night 2 (up to {q['night1'] + q['night2_new']:,}-query kNN memory, "
              f"kNN groups {doc['champion_latency_ms']['knn_groups']}, load {doc['champion_latency_ms']['load']}): "
              f"predictor step p50 {doc['champion_latency_ms']['predictor_step_p50']} ms, router.predict (encoder "
              f"included) p50 {doc['champion_latency_ms']['router_predict_p50']} ms.",
              "", f"Night 1: {n1['message']}. Night 2: {n2['message']}; champion's metrics "
              f"{n2.get('champion_evaluation') or 'n/a'} (evaluation cache: a registered version is evaluated on a "
              "held-out slice once). Encoder: "
              f"{json.dumps(n1.get('encoder', {}))}. Queries/s = the night's training queries / the stage's seconds "
              "(night 2: all queries in its snapshot)."]
    return "\n".join(lines)


def _write_section(path: Path, markdown: str) -> None:
    start, end = "<!-- scale:start -->", "<!-- scale:end -->"
    text = path.read_text(encoding="utf-8")
    if start not in text:
        raise SystemExit(f"{path} has no {start} marker; add the section markers first")
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + markdown + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
