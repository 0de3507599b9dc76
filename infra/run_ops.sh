#!/usr/bin/env bash
# Issue 15's operations against the real servers of infra/services.sh (PostgreSQL, MLflow on it, Prefect server +
# worker, the routing service), in the order a person would meet them:
#   1. servers up; the nightly, canary and drift deployments on the Prefect server (flows/prefect.yaml);
#   2. a champion (one nightly run by the worker, only when the registry has none);
#   3. a challenger: a nightly run on a small slice (12 queries per task: a weaker router) whose gates hold it back
#      (infra/gates-register-only.yaml), so it is registered with the `challenger` alias and the canary, not the
#      pipeline, decides it;
#   4. the service restarted with a shadow sample and a canary share, then traffic and feedback from simulated
#      users (infra/ops_traffic.py: the champion's answers rated up 80% of the time, the challenger's 30%);
#   5. `mixllm shadow report` (agreement, deltas, off-policy value; an MLflow run);
#   6. the canary deployment run by the worker: the verdict (rollback, here) tags the challenger's version and
#      removes its alias; the service stops routing to it at its next poll;
#   7. drifted traffic (requests about trips, recipes, poems), then the drift deployment run by the worker: it
#      reports the drift and starts the nightly deployment (`run_deployment`), tagged drift-triggered;
#   8. `mixllm calibrate --target-cost-per-1k-requests` on the traffic just logged.
# Options (environment): MIXLLM_OPS_QUICK=1 trains on a small slice and cancels the drift-triggered nightly once it
# is seen (it would be a full-size run); MIXLLM_OPS_KEEP=1 leaves the servers up (default: `down` at the end);
# MIXLLM_OPS_TARGET (USD per 1,000 requests, 2.0), MIXLLM_OPS_REQUESTS (240), MIXLLM_OPS_CANARY_SHARE (0.3).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=/dev/null
source scripts/env.sh
BIN=$REPO/.venv/bin
T0=$SECONDS
step() { printf '\n\033[1m== [%ss] %s\033[0m\n' "$((SECONDS - T0))" "$*"; }
finish() { if [ "${MIXLLM_OPS_KEEP:-0}" != 1 ]; then infra/services.sh down; fi; }
trap finish EXIT

step "1. servers and deployments"
infra/services.sh up
eval "$(infra/services.sh env)"
eval "$(infra/services.sh client-env)"
STATE=${MIXLLM_INFRA_DIR:-$REPO/.mixllm/infra}
export PREFECT_HOME=$STATE/prefect
POOL=$MIXLLM_TEST_WORK_POOL
SERVICE=$MIXLLM_TEST_SERVICE_URL
"$BIN/mixllm" pipeline schedule --pool "$POOL"
SPEC=$("$BIN/python" -c 'import importlib.util as u, pathlib as p
print(p.Path(next(iter(u.find_spec("mixllm_flows").submodule_search_locations))) / "prefect.yaml")')
MIXLLM_WORKDIR=$REPO "$BIN/prefect" --no-prompt deploy --prefect-file "$SPEC" --name canary --name drift \
  --pool "$POOL"

PARAMS='{}'
if [ "${MIXLLM_OPS_QUICK:-0}" = 1 ]; then
  PARAMS='{"overrides": {"max_train_queries_per_task": 40, "max_test_queries_per_task": 30, "build_bento": false,
    "router": {"epochs": 1, "tag_enhanced": false, "progress": false, "predictor": {"n_estimators": 30, "min_child_samples": 5}}}}'
fi
nightly() {  # nightly EXTRA_OVERRIDES_JSON: one hand-triggered run of the nightly deployment, executed by the worker
  local params
  params=$("$BIN/python" -c 'import json,sys; a=json.loads(sys.argv[1]); o=a.get("overrides",{});
o.update(json.loads(sys.argv[2])); a["overrides"]=o; print(json.dumps(a))' "$PARAMS" "$1")
  "$BIN/prefect" --no-prompt deployment run mixllm-nightly/nightly --params "$params" --watch --watch-interval 5
}
alias_of() {  # alias_of ALIAS: the version holding it, or nothing
  "$BIN/mixllm" versions --json | "$BIN/python" -c 'import json,sys
print(next((v["version"] for v in json.load(sys.stdin) if sys.argv[1] in v["aliases"]), ""))' "$1"
}

step "2. champion"
if [ -z "$(alias_of champion)" ]; then nightly '{}'; else echo "champion: version $(alias_of champion)"; fi

step "3. challenger: a nightly run held back by its gates"
nightly "{\"gates_path\": \"$REPO/infra/gates-register-only.yaml\", \"max_train_queries_per_task\": 12}"
CHALLENGER=$(alias_of challenger)
[ -n "$CHALLENGER" ] && [ "$CHALLENGER" != "$(alias_of champion)" ] || { echo "no challenger registered" >&2; exit 1; }
"$BIN/mixllm" versions

step "4. service with shadow (100% of requests) and canary (${MIXLLM_OPS_CANARY_SHARE:-0.3} of sessions); traffic"
infra/services.sh service-down
# nice 19, not SCHED_IDLE: on a machine shared with batch jobs an idle-class shadow process waits for all of them
MIXLLM_SHADOW_SAMPLE=1.0 MIXLLM_SHADOW_PRIORITY=nice MIXLLM_CANARY_SHARE=${MIXLLM_OPS_CANARY_SHARE:-0.3} \
  infra/services.sh service
curl -fsS "$SERVICE/readyz" | "$BIN/python" -c 'import json,sys; r=json.load(sys.stdin)
print(json.dumps({k: r.get(k) for k in ("router_version", "source_version", "canary", "shadow")}))'
"$BIN/python" infra/ops_traffic.py send --url "$SERVICE" --n "${MIXLLM_OPS_REQUESTS:-240}"

step "5. shadow report"
"$BIN/python" infra/ops_traffic.py wait-shadow --url "$SERVICE" --timeout 300 || echo "(shadow queue not drained)"
sleep 2  # the outbox forwards to the store every 0.5 s
"$BIN/mixllm" shadow report --hours 1

step "6. canary: the deployment, run by the worker"
"$BIN/prefect" --no-prompt deployment run mixllm-canary/canary --watch --watch-interval 5
grep "canary: " "$STATE/logs/worker.log" | tail -n 1 || true
"$BIN/mixllm" versions
sleep 6  # the service polls the challenger alias every 5 s
curl -fsS "$SERVICE/readyz" | "$BIN/python" -c 'import json,sys; print(json.dumps(json.load(sys.stdin).get("canary")))'

step "7. drift: drifted traffic, then the deployment, run by the worker"
"$BIN/python" infra/ops_traffic.py send --url "$SERVICE" --n 150 --drifted --seed 1 --tag drifted
"$BIN/prefect" --no-prompt deployment run mixllm-drift/drift --watch --watch-interval 5
grep "drift: " "$STATE/logs/worker.log" | tail -n 2 || true
if [ "${MIXLLM_OPS_QUICK:-0}" = 1 ]; then
  "$BIN/python" infra/ops_traffic.py triggered --cancel  # seen, then cancelled: it would be a full-size nightly
else
  "$BIN/python" infra/ops_traffic.py triggered
fi

step "8. spend target: calibrate on the traffic just logged"
"$BIN/mixllm" calibrate --target-cost-per-1k-requests "${MIXLLM_OPS_TARGET:-2.0}" --days 1 || \
  echo "(no willingness to pay meets the target: exit 1)"

step "done in $((SECONDS - T0)) s"
echo "MLflow UI: $MIXLLM_TEST_MLFLOW_URL   Prefect UI: ${PREFECT_API_URL%/api}   service: $SERVICE"
