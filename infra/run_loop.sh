#!/usr/bin/env bash
# The whole mixllm loop against the real servers of infra/services.sh, on this machine:
#   1. servers up (PostgreSQL, MLflow tracking server on it, Prefect server, process work pool + worker);
#   2. the nightly deployment registered on the Prefect server with its cron (`mixllm pipeline schedule`);
#   3. when the registry has no champion yet: one nightly run, triggered by hand and executed by the worker;
#   4. the routing service (`mixllm serve`) started on the registry's champion, then called (/readyz, /route);
#   5. a second nightly run via the worker that now knows the service: it trains, gates, registers, promotes,
#      reloads the running service (POST /admin/reload) and smoke-tests it over HTTP (rolling back on failure);
#   6. the service called again, and the registered versions listed.
# Options (environment): MIXLLM_LOOP_QUICK=1 trains on a small slice (a few dozen queries per task, tiny router)
# so the loop takes minutes, not tens of minutes; MIXLLM_LOOP_DOWN=1 stops the servers at the end. The service
# stays up otherwise: `infra/services.sh down` stops everything.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=/dev/null
source scripts/env.sh
BIN=$REPO/.venv/bin
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. servers"
infra/services.sh up
eval "$(infra/services.sh env)"
STATE=${MIXLLM_INFRA_DIR:-$REPO/.mixllm/infra}
export PREFECT_API_URL=$MIXLLM_TEST_PREFECT_API_URL
export MIXLLM_TRACKING_URI=$MIXLLM_TEST_MLFLOW_URL MIXLLM_REGISTRY_URI=$MIXLLM_TEST_MLFLOW_URL
export MLFLOW_TRACKING_URI=$MIXLLM_TEST_MLFLOW_URL MIXLLM_HOME=$STATE/home
export PREFECT_HOME=$STATE/prefect

PARAMS='{}'
if [ "${MIXLLM_LOOP_QUICK:-0}" = 1 ]; then
  PARAMS='{"overrides": {"max_train_queries_per_task": 40, "max_test_queries_per_task": 30, "build_bento": false,
    "router": {"epochs": 1, "tag_enhanced": false, "progress": false, "predictor": {"n_estimators": 30, "min_child_samples": 5}}}}'
fi

nightly() {  # nightly EXTRA_PARAMS_JSON: one hand-triggered run of the deployment, executed by the worker
  local params
  params=$("$BIN/python" -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]);
o=a.get("overrides",{}); o.update(b); a["overrides"]=o; print(json.dumps(a))' "$PARAMS" "$1")
  "$BIN/prefect" --no-prompt deployment run mixllm-nightly/nightly --params "$params" \
    --watch --watch-interval 5
}

step "2. nightly deployment on the Prefect server"
"$BIN/mixllm" pipeline schedule --pool "$MIXLLM_TEST_WORK_POOL"

if ! "$BIN/mixllm" versions --json | "$BIN/python" -c \
    'import json,sys; sys.exit(0 if any("champion" in v["aliases"] for v in json.load(sys.stdin)) else 1)'; then
  step "3. first nightly run (no champion yet), executed by the worker"
  nightly '{}'
else
  step "3. the registry already has a champion: no bootstrap run"
fi

step "4. routing service on the champion"
infra/services.sh service
SERVICE=$MIXLLM_TEST_SERVICE_URL
curl -fsS "$SERVICE/readyz"; echo
curl -fsS -X POST "$SERVICE/route" -H 'content-type: application/json' \
  -d '{"prompt": "What is the derivative of x^3 + 2x with respect to x?"}'; echo

step "5. nightly run that reloads and smoke-tests the running service"
nightly "{\"service_url\": \"$SERVICE\"}"

step "6. the service after the nightly run"
curl -fsS "$SERVICE/readyz"; echo
curl -fsS -X POST "$SERVICE/route" -H 'content-type: application/json' \
  -d '{"prompt": "Which planet in the solar system is known as the Red Planet?", "willingness_to_pay": 100}'; echo
"$BIN/mixllm" versions
infra/services.sh status || true
echo "MLflow UI: $MIXLLM_TEST_MLFLOW_URL   Prefect UI: ${PREFECT_API_URL%/api}   service: $SERVICE"

if [ "${MIXLLM_LOOP_DOWN:-0}" = 1 ]; then infra/services.sh down; fi
