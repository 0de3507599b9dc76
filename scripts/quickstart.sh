#!/usr/bin/env bash
# The README's main job: the nightly pipeline once, on embedded defaults (SQLite-backed MLflow and store under
# .mixllm/, Prefect with its ephemeral API) and on this checkout's full RouterBench files (data/routerbench/), named
# explicitly: `mixllm pipeline run` alone uses the small sample packaged with mixllm (the installed-wheel default).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
data="$PWD/data/routerbench"
list() { local out="" f; for f in "$data"/*_"$1".csv.gz; do out+="${out:+,}\"$f\""; done; echo "[$out]"; }
export MIXLLM_PIPELINE_LANDING=${MIXLLM_PIPELINE_LANDING:-$(list train)}
export MIXLLM_PIPELINE_TEST_PATHS=${MIXLLM_PIPELINE_TEST_PATHS:-$(list test)}
.venv/bin/mixllm pipeline run "$@"
cat <<'MSG'

Where to look next:
  .venv/bin/mixllm versions                     # registered router versions, aliases and metrics
  .venv/bin/mlflow ui --backend-store-uri sqlite:///.mixllm/mlflow.db --workers 1 --port 5001   # then open http://127.0.0.1:5001
  .venv/bin/mixllm serve                        # the routing service on the champion (see README "Routing service")
  .venv/bin/mixllm quarantine                   # rows the data contracts refused, with the reason
MSG
