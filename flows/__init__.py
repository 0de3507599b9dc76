"""Prefect flows: thin compositions of `mixllm` stages, one flow per file (the library never imports these).

Installed as the package ``mixllm_flows`` (pyproject maps it to this folder), so the flows run from a wheel too:
- `mixllm_flows.nightly`: the nightly retrain (ingest -> ... -> promote, then delivery);
  ``python -m mixllm_flows.nightly`` (what `mixllm pipeline run` starts) runs it once.
- `mixllm_flows.train`: the nightly's compute subflow (per-LLM predictors + the two evaluations) on the task runner
  `PipelineConfig.runner` names (thread pool or Dask).
- `mixllm_flows.delivery`: the subflow every flow ships a version through: package -> deploy -> smoke -> rollback.
- `mixllm_flows.promote`: move ``champion`` to a version by hand, then deliver it.
- `mixllm_flows.rollback`: move ``champion`` back, then deliver the restored version.
Deployments for a Prefect server are declared in ``prefect.yaml`` next to these files (`mixllm pipeline schedule`).
"""
