#!/usr/bin/env bash
# The README's main job: the nightly pipeline once, on embedded defaults (SQLite-backed MLflow and store under
# .mixllm/, Prefect with its ephemeral API, the bundled RouterBench sample as landing files).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
.venv/bin/mixllm pipeline run "$@"
cat <<'MSG'

Where to look next:
  .venv/bin/mixllm versions                     # registered router versions, aliases and metrics
  .venv/bin/mlflow ui --backend-store-uri sqlite:///.mixllm/mlflow.db --workers 1 --port 5001   # then open http://127.0.0.1:5001
  .venv/bin/mixllm serve                        # the routing service on the champion (see README "Routing service")
  .venv/bin/mixllm quarantine                   # rows the data contracts refused, with the reason
MSG
