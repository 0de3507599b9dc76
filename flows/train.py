"""The nightly flow's compute: train a candidate, then evaluate it and the champion, on the configured task runner.

A subflow so that the runner can be chosen per run (`PipelineConfig.runner`): the nightly flow calls
``train_and_evaluate.with_options(task_runner=task_runner(config))``. The representation (tags, fine-tuning) runs
in this process, once; the per-LLM predictors (one task per LLM) and the two evaluations are the fan-out, in
Prefect's thread pool or on Dask worker processes, with the same results (tests/integration/test_dask_fanout.py).
What crosses to a worker is plain data: a per-LLM training slice and the router's config (not the router with its
encoder), router directories as paths, data frames and typed configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped

from mixllm import pipeline as P
from mixllm.timing import StageClock

from .common import COMPUTE

prepare_candidate = task(P.prepare_candidate, name="embeddings-and-tags", **COMPUTE)
fit_llm = task(P.fit_candidate_llm, name="fit-llm-predictors", task_run_name="fit-{name}", **COMPUTE)
save_candidate = task(P.save_candidate, name="assemble-candidate", **COMPUTE)


def _evaluate(role: str, router_dir: Path, test: Any, config: Any, settings: Any, train: Any) -> Any:
    return P.evaluate_router(router_dir, test, config, settings, train)


def _evaluate_champion(role: str, router_dir: Path, version: str | None, test: Any, config: Any,
                       settings: Any) -> Any:
    return P.champion_evaluation(router_dir, version, test, config, settings)


evaluate_router = task(_evaluate, name="evaluate", task_run_name="evaluate-{role}", **COMPUTE)
evaluate_champion = task(_evaluate_champion, name="evaluate-champion", task_run_name="evaluate-{role}", **COMPUTE)


@flow(name="mixllm-train-evaluate", flow_run_name="train-evaluate-{config.runner}")
def train_and_evaluate(train: Any, test: Any, config: P.PipelineConfig, settings: Any, champion_dir: Path | None,
                       out_dir: Path, champion_version: str | None = None) -> dict[str, Any]:
    """Candidate saved in `out_dir`; both routers evaluated on the same held-out slice (so the gate compares like
    with like). Returns the candidate's directory, report and metrics, the champion's metrics (None without a
    champion; its own figures, no baselines) and whether they came from the evaluation cache (`champion_version`
    evaluated on the same held-out rows before: `mixllm.pipeline.champion_evaluation`), and the wall seconds of
    encode / representation / predictors / evaluation."""
    clock = StageClock()
    router, prepared, seconds = prepare_candidate(train, config, settings)
    clock.merge(seconds)
    with clock.time("predictors"):
        slices = P.llm_slices(prepared)
        per_llm = fit_llm.map([s.names[0] for s in slices], router_config=unmapped(router.config), prepared=slices)
        cand_dir = save_candidate(router, prepared, per_llm.result(), out_dir)
    with clock.time("evaluation"):
        cand = evaluate_router.submit("candidate", cand_dir, test, config, settings, train)
        champ = evaluate_champion.submit("champion", champion_dir, champion_version, test, config, settings) \
            if champion_dir else None
        report, metrics = cand.result()
        champion_metrics, cached = champ.result() if champ else (None, False)
    return {"candidate_dir": cand_dir, "report": report, "metrics": metrics, "champion_metrics": champion_metrics,
            "champion_cached": cached, "timings": clock.seconds}
