"""Prefect flows: thin compositions of `mixllm` stages, one flow per file (the library never imports these).

- `flows.nightly`: the nightly retrain (ingest -> ... -> smoke test); `python -m flows.nightly` runs it once.
- `flows.promote`: move ``champion`` to a version by hand, then reload the service.
- `flows.rollback`: move ``champion`` back, then reload the service.
Deployments for a Prefect server are declared in the repository's ``prefect.yaml``.
"""
