#!/usr/bin/env bash
# Real servers for mixllm on this machine: PostgreSQL (Debian's package), the MLflow tracking server on it with a
# local artifact root, the Prefect server with a process work pool and one worker, Prometheus (Debian's package)
# with the rules in infra/prometheus/, and (once a champion exists) the routing service, which Prometheus scrapes.
# Idempotent: `up` starts only what is not already healthy; `down` stops only what it started.
#
#   infra/services.sh up        install PostgreSQL/Chromium/Prometheus if missing, start them and the worker
#   infra/services.sh service   start the routing service (`mixllm serve`) on the registry's champion; it reads
#                               MIXLLM_* serving settings from the environment (MIXLLM_SHADOW_SAMPLE, ...)
#   infra/services.sh service-down  stop only the service (e.g. to start it again with other settings)
#   infra/services.sh status    one line per component
#   infra/services.sh env       `export` lines for the tests (MIXLLM_TEST_*): eval "$(infra/services.sh env)"
#   infra/services.sh client-env  `export` lines that point your shell's mixllm/prefect/mlflow at the servers
#   infra/services.sh logs [n]  tail of every log
#   infra/services.sh down      stop everything started here (and PostgreSQL if `up` started it)
#   infra/services.sh purge     down, then drop the databases and delete the state folder
#
# Settings (environment, all optional): MIXLLM_INFRA_DIR (state: pid files, logs, artifacts; default
# <repo>/.mixllm/infra), MIXLLM_INFRA_HOST (127.0.0.1), MIXLLM_MLFLOW_PORT (5000), MIXLLM_PREFECT_PORT (4200),
# MIXLLM_SERVICE_PORT (3000), MIXLLM_WORK_POOL (mixllm-process), MIXLLM_PG_PORT (5432), MIXLLM_PG_USER/PASSWORD/DB
# (mixllm/mixllm/mixllm), MIXLLM_PROMETHEUS_PORT (9090), MIXLLM_PROMETHEUS_INTERVAL (scrape and rule interval, 5s),
# MIXLLM_INFRA_NO_APT=1 (never call apt-get), MIXLLM_INFRA_TIMEOUT (health wait, 120 s).
# Scrape targets: every <state>/prometheus/targets/*.json (Prometheus file_sd format, re-read within seconds);
# `service` writes infra-service.json there, tests and users add files of their own.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=/dev/null
source scripts/env.sh
BIN=$REPO/.venv/bin

STATE=${MIXLLM_INFRA_DIR:-$REPO/.mixllm/infra}
HOST=${MIXLLM_INFRA_HOST:-127.0.0.1}
MLFLOW_PORT=${MIXLLM_MLFLOW_PORT:-5000}
PREFECT_PORT=${MIXLLM_PREFECT_PORT:-4200}
SERVICE_PORT=${MIXLLM_SERVICE_PORT:-3000}
POOL=${MIXLLM_WORK_POOL:-mixllm-process}
PG_PORT=${MIXLLM_PG_PORT:-5432}
PG_USER=${MIXLLM_PG_USER:-mixllm}
PG_PASSWORD=${MIXLLM_PG_PASSWORD:-mixllm}
PG_DB=${MIXLLM_PG_DB:-mixllm}
PG_PREFECT_DB=${PG_DB}_prefect
TIMEOUT=${MIXLLM_INFRA_TIMEOUT:-120}
PROM_PORT=${MIXLLM_PROMETHEUS_PORT:-9090}
PROM_INTERVAL=${MIXLLM_PROMETHEUS_INTERVAL:-5s}
PROM_DIR=$STATE/prometheus
PROM_TARGETS=$PROM_DIR/targets

MLFLOW_URL=http://$HOST:$MLFLOW_PORT
PREFECT_URL=http://$HOST:$PREFECT_PORT/api
SERVICE_URL=http://$HOST:$SERVICE_PORT
PROM_URL=http://$HOST:$PROM_PORT
PG_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
PREFECT_DB_URL=postgresql+asyncpg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_PREFECT_DB

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)

log() { printf '[infra %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------------------------------------ helpers ---

pidfile() { echo "$STATE/run/$1.pid"; }

running() {  # running NAME -> 0 when the recorded process is alive
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

healthy() {  # healthy URL [expected-substring]
  local body
  body=$(curl -fsS --max-time 3 "$1" 2>/dev/null) || return 1
  [ -z "${2:-}" ] || [[ $body == *"$2"* ]]
}

wait_healthy() {  # wait_healthy NAME URL [substring]: poll until healthy, fail early if the process died
  local name=$1 url=$2 want=${3:-} t0=$SECONDS
  until healthy "$url" "$want"; do
    if ! running "$name"; then
      tail -n 30 "$STATE/logs/$name.log" >&2 || true
      die "$name exited while starting (log: $STATE/logs/$name.log)"
    fi
    (( SECONDS - t0 < TIMEOUT )) || die "$name not healthy at $url after ${TIMEOUT}s (log: $STATE/logs/$name.log)"
    sleep 0.5
  done
  log "$name healthy at $url after $((SECONDS - t0))s"
}

launch() {  # launch NAME CMD...: detached in its own session (so `down` can end its children), pid recorded
  local name=$1; shift
  mkdir -p "$STATE/run" "$STATE/logs"
  [ -f "$STATE/logs/$name.log" ] && mv -f "$STATE/logs/$name.log" "$STATE/logs/$name.log.1"
  setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

own_sessions() {  # own_sessions PID: children of PID that lead a session of their own (a worker's flow runs)
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do
    [ "$(ps -o sid= -p "$c" 2>/dev/null | tr -d ' ')" = "$c" ] && echo "$c"
  done
  return 0
}

alive() {  # alive PID...: 0 when one of the processes or their process groups is still there
  local p
  for p in "$@"; do kill -0 "$p" 2>/dev/null || pgrep -g "$p" >/dev/null && return 0; done
  return 1
}

term_wait() {  # term_wait SECONDS PID...: TERM each process group, wait until all are gone or SECONDS pass
  local t=$1 p i; shift
  for p in "$@"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for i in $(seq 1 $((t * 2))); do alive "$@" || return 0; sleep 0.5; done
  alive "$@" && return 1 || return 0
}

stop() {  # stop NAME [SIGNAL]: first TERM the sessions its children opened (a worker starts each flow run in a
  # session of its own) while it still reads their output, so Prefect records the run as Crashed and frees its
  # concurrency slot: with the worker gone first, the run's crash report died on a broken pipe and it stayed Running.
  # Then signal the recorded pid (a worker may ignore signals sent to its group) and TERM its session (uvicorn
  # workers); SIGKILL whatever is left after 10 s.
  local name=$1 sig=${2:-TERM} f pid p kids
  f=$(pidfile "$name")
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  read -r -a kids <<<"$(own_sessions "$pid" | tr '\n' ' ')"
  if [ ${#kids[@]} -gt 0 ]; then
    log "$name: stopping ${#kids[@]} run(s) it started (pids ${kids[*]})"
    term_wait 20 "${kids[@]}" || log "$name: its runs still alive after 20s"
  fi
  kill -"$sig" "$pid" 2>/dev/null || true
  if ! term_wait 10 "$pid" "${kids[@]}"; then
    log "$name did not stop in 10s: SIGKILL"
    for p in "$pid" "${kids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
  log "$name stopped"
}

stop_service() {  # the service's BentoML arbiter restarts a worker that dies, and the worker leads a session of its
  # own: TERM the arbiter first (it stops its workers), then what is left. Stopping the worker first, as `stop` does
  # for the Prefect worker's runs, made the arbiter start a new one that outlived it, still holding the port.
  local f pid p kids
  f=$(pidfile service)
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  read -r -a kids <<<"$(own_sessions "$pid" | tr '\n' ' ')"
  term_wait 15 "$pid" || log "service: its arbiter is still alive after 15s"
  if ! term_wait 10 "$pid" "${kids[@]}"; then
    log "service did not stop: SIGKILL"
    for p in "$pid" "${kids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
  fi
  rm -f "$f"
  log "service stopped"
}

admin_token() {  # the service's admin token (POST /admin/reload), shared with the worker's pipeline runs
  local f=$STATE/run/admin_token
  if [ ! -s "$f" ]; then
    mkdir -p "$STATE/run"
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f")
  fi
  cat "$f"
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# --------------------------------------------------------------------------------------------- postgresql ---

apt_install() {  # apt_install PKG...: only the missing ones, one `apt-get update` first
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${MIXLLM_INFRA_NO_APT:-0}" = 1 ] && die "missing Debian packages: ${missing[*]} (MIXLLM_INFRA_NO_APT=1)"
  local t0=$SECONDS
  log "installing ${missing[*]} (apt-get)"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"$STATE/logs/apt.log" 2>&1 || { tail -n 20 "$STATE/logs/apt.log" >&2; die "apt-get install failed"; }
  log "installed ${missing[*]} in $((SECONDS - t0))s"
}

pg_cluster() {  # prints "VERSION NAME" of the first cluster, creating one if the package made none
  local line
  line=$(pg_lsclusters -h 2>/dev/null | head -n1)
  if [ -z "$line" ]; then
    local ver; ver=$(ls /usr/lib/postgresql | sort -n | tail -n1)
    "${SUDO[@]}" pg_createcluster "$ver" main -p "$PG_PORT" >/dev/null
    line=$(pg_lsclusters -h | head -n1)
  fi
  awk '{print $1, $2}' <<<"$line"
}

psql_admin() { "${SUDO[@]}" runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }

postgres_up() {
  apt_install postgresql
  local ver name status
  read -r ver name < <(pg_cluster)
  status=$(pg_lsclusters -h | awk -v v="$ver" -v n="$name" '$1==v && $2==n {print $4}')
  if [ "$status" != online ]; then
    "${SUDO[@]}" pg_ctlcluster "$ver" "$name" start
    touch "$STATE/run/postgres.started-by-infra"
    log "postgresql $ver/$name started"
  fi
  local t0=$SECONDS
  until psql_admin -c 'select 1' >/dev/null 2>&1; do
    (( SECONDS - t0 < TIMEOUT )) || die "postgresql does not accept connections"
    sleep 0.3
  done
  if [ -z "$(psql_admin -c "select 1 from pg_roles where rolname='$PG_USER'")" ]; then
    psql_admin -c "create role \"$PG_USER\" login password '$PG_PASSWORD'"
  fi
  local db
  for db in "$PG_DB" "$PG_PREFECT_DB"; do
    if [ -z "$(psql_admin -c "select 1 from pg_database where datname='$db'")" ]; then
      psql_admin -c "create database \"$db\" owner \"$PG_USER\""
      log "database $db created"
    fi
  done
}

postgres_down() {
  [ -f "$STATE/run/postgres.started-by-infra" ] || return 0
  local ver name
  read -r ver name < <(pg_cluster)
  "${SUDO[@]}" pg_ctlcluster "$ver" "$name" stop || true
  rm -f "$STATE/run/postgres.started-by-infra"
  log "postgresql $ver/$name stopped"
}

# ---------------------------------------------------------------------------------------- mlflow, prefect ---

mlflow_up() {
  if healthy "$MLFLOW_URL/health" OK; then log "mlflow already up at $MLFLOW_URL"; return; fi
  port_busy "$MLFLOW_PORT" && die "port $MLFLOW_PORT is taken by something else (set MIXLLM_MLFLOW_PORT)"
  mkdir -p "$STATE/mlartifacts"
  # The GenAI job runner (7 huey consumers, ~600 MB) serves no purpose here: off.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false launch mlflow "$BIN/mlflow" server --backend-store-uri "$PG_URL" --artifacts-destination "$STATE/mlartifacts" \
    --workers 1 --host "$HOST" --port "$MLFLOW_PORT"
}

prefect_env() {  # the environment every Prefect process here shares
  export PREFECT_HOME=$STATE/prefect
  export PREFECT_API_URL=$PREFECT_URL
  export PREFECT_SERVER_DATABASE_CONNECTION_URL=$PREFECT_DB_URL
  export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=true
  # Concurrency leases on disk, not in the server's memory: a nightly run killed mid-way (worker stopped, machine
  # rebooted) holds the deployment's one slot only until its lease expires (5 min), even across a server restart.
  # With in-memory leases the restart forgot the lease and the slot stayed taken: every later run waited forever.
  export PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem
}

prefect_up() {
  if healthy "$PREFECT_URL/health" true; then log "prefect already up at $PREFECT_URL"; return; fi
  port_busy "$PREFECT_PORT" && die "port $PREFECT_PORT is taken by something else (set MIXLLM_PREFECT_PORT)"
  ( prefect_env; launch prefect "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT" )
}

worker_up() {
  if running worker; then log "worker already polling $POOL"; return; fi
  (
    prefect_env
    # Flow runs inherit this environment: they track to the MLflow server, not to a local SQLite file.
    export MIXLLM_TRACKING_URI=$MLFLOW_URL MIXLLM_REGISTRY_URI=$MLFLOW_URL MLFLOW_TRACKING_URI=$MLFLOW_URL
    export MIXLLM_HOME=$STATE/home MIXLLM_ADMIN_TOKEN
    MIXLLM_ADMIN_TOKEN=$(admin_token)
    export PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-5}  # pick up hand-triggered runs sooner
    launch worker "$BIN/prefect" worker start --pool "$POOL" --type process --name "mixllm-worker-$(uname -n)" \
      --limit 1 --create-pool-if-not-found  # creates the process work pool on first start
  )
  local t0=$SECONDS
  until grep -q "started" "$STATE/logs/worker.log" 2>/dev/null; do
    running worker || { tail -n 30 "$STATE/logs/worker.log" >&2; die "worker exited while starting"; }
    (( SECONDS - t0 < TIMEOUT )) || die "worker did not start (log: $STATE/logs/worker.log)"
    sleep 0.5
  done
  log "worker polling $POOL after $((SECONDS - t0))s"
}

service_up() {
  if healthy "$SERVICE_URL/readyz"; then log "service already up at $SERVICE_URL"; return; fi
  healthy "$MLFLOW_URL/health" OK || die "the MLflow server is down: run infra/services.sh up first"
  port_busy "$SERVICE_PORT" && die "port $SERVICE_PORT is taken by something else (set MIXLLM_SERVICE_PORT)"
  (
    export MIXLLM_TRACKING_URI=$MLFLOW_URL MIXLLM_REGISTRY_URI=$MLFLOW_URL MLFLOW_TRACKING_URI=$MLFLOW_URL
    export MIXLLM_HOME=$STATE/home MIXLLM_ADMIN_TOKEN
    MIXLLM_ADMIN_TOKEN=$(admin_token)
    launch service "$BIN/mixllm" serve --host "$HOST" --port "$SERVICE_PORT"
  )
  wait_healthy service "$SERVICE_URL/readyz"
  service_target add
}

# ------------------------------------------------------------------------------------------- prometheus ---

prometheus_config() {  # written at each start: absolute paths to the rules in the checkout and the targets folder
  mkdir -p "$PROM_TARGETS" "$PROM_DIR/data"
  cat >"$PROM_DIR/prometheus.yml" <<EOF
# Generated by infra/services.sh at each start: edit the script or infra/prometheus/mixllm.rules.yml instead.
global:
  scrape_interval: $PROM_INTERVAL
  evaluation_interval: $PROM_INTERVAL
rule_files:
  - $REPO/infra/prometheus/mixllm.rules.yml
scrape_configs:
  - job_name: mixllm
    metrics_path: /metrics
    file_sd_configs:
      - files: ["$PROM_TARGETS/*.json"]
        refresh_interval: 5s
EOF
  /usr/bin/promtool check config "$PROM_DIR/prometheus.yml" >"$STATE/logs/promtool.log" 2>&1 \
    || { cat "$STATE/logs/promtool.log" >&2; die "invalid Prometheus config or rules (see above)"; }
}

prometheus_up() {
  if healthy "$PROM_URL/-/ready" Ready; then log "prometheus already up at $PROM_URL"; return; fi
  port_busy "$PROM_PORT" && die "port $PROM_PORT is taken by something else (set MIXLLM_PROMETHEUS_PORT)"
  prometheus_config
  # --web.enable-lifecycle: `curl -X POST $PROM_URL/-/reload` re-reads the rules after an edit, no restart.
  launch prometheus /usr/bin/prometheus --config.file="$PROM_DIR/prometheus.yml" \
    --storage.tsdb.path="$PROM_DIR/data" --storage.tsdb.retention.time=15d \
    --web.listen-address="$HOST:$PROM_PORT" --web.enable-lifecycle
}

service_target() {  # service_target add|remove: the infra's service as a scrape target of the infra's Prometheus
  mkdir -p "$PROM_TARGETS"
  if [ "$1" = add ]; then
    printf '[{"targets": ["%s:%s"], "labels": {"deployment": "infra"}}]\n' "$HOST" "$SERVICE_PORT" \
      >"$PROM_TARGETS/.infra-service.tmp"
    mv -f "$PROM_TARGETS/.infra-service.tmp" "$PROM_TARGETS/infra-service.json"  # whole file at once for file_sd
  else
    rm -f "$PROM_TARGETS/infra-service.json"
  fi
}

# --------------------------------------------------------------------------------------------- commands ---

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$STATE/run" "$STATE/logs"
  local tools=()  # slim images may lack these
  command -v curl >/dev/null || tools+=(curl)
  command -v pgrep >/dev/null || tools+=(procps)
  apt_install postgresql chromium prometheus "${tools[@]}"
  postgres_up
  mlflow_up
  prefect_up  # the servers start in parallel; wait for them together
  prometheus_up
  wait_healthy mlflow "$MLFLOW_URL/health" OK
  wait_healthy prefect "$PREFECT_URL/health" true
  wait_healthy prometheus "$PROM_URL/-/ready" Ready
  worker_up
  log "up in $((SECONDS - t0))s: MLflow $MLFLOW_URL  Prefect UI http://$HOST:$PREFECT_PORT  pool $POOL " \
    " Prometheus $PROM_URL"
}

cmd_status() {
  local ok=0
  if pg_lsclusters -h 2>/dev/null | grep -q online; then echo "postgres  online ($PG_DB on port $PG_PORT)"
  else echo "postgres  DOWN"; ok=1; fi
  if healthy "$MLFLOW_URL/health" OK; then echo "mlflow    up   $MLFLOW_URL"; else echo "mlflow    DOWN"; ok=1; fi
  if healthy "$PREFECT_URL/health" true; then echo "prefect   up   $PREFECT_URL"; else echo "prefect   DOWN"; ok=1; fi
  if running worker; then echo "worker    up   pool $POOL (pid $(cat "$(pidfile worker)"))"; else echo "worker    DOWN"; ok=1; fi
  if healthy "$PROM_URL/-/ready" Ready; then echo "prometheus up  $PROM_URL (targets: $PROM_TARGETS)"
  else echo "prometheus DOWN"; ok=1; fi
  if healthy "$SERVICE_URL/readyz"; then echo "service   up   $SERVICE_URL"; else echo "service   down (start: infra/services.sh service)"; fi
  return $ok
}

cmd_env() {
  cat <<EOF
export MIXLLM_TEST_MLFLOW_URL=$MLFLOW_URL
export MIXLLM_TEST_PREFECT_API_URL=$PREFECT_URL
export MIXLLM_TEST_WORK_POOL=$POOL
export MIXLLM_TEST_PG_URL=$PG_URL
export MIXLLM_TEST_SERVICE_URL=$SERVICE_URL
export MIXLLM_TEST_PROMETHEUS_URL=$PROM_URL
export MIXLLM_TEST_PROMETHEUS_TARGETS=$PROM_TARGETS
EOF
}

cmd_client_env() {  # the same state the worker's flow runs and the service use
  cat <<EOF
export PREFECT_API_URL=$PREFECT_URL
export MIXLLM_TRACKING_URI=$MLFLOW_URL MIXLLM_REGISTRY_URI=$MLFLOW_URL MLFLOW_TRACKING_URI=$MLFLOW_URL
export MIXLLM_HOME=$STATE/home
export MIXLLM_ADMIN_TOKEN=$(admin_token)
EOF
}

cmd_down() {
  stop_service
  service_target remove
  stop worker INT
  stop prefect
  stop mlflow
  stop prometheus
  postgres_down
}

cmd_purge() {
  stop_service; service_target remove; stop worker INT; stop prefect; stop mlflow; stop prometheus
  if pg_lsclusters -h 2>/dev/null | grep -q online; then
    psql_admin -c "drop database if exists \"$PG_DB\"" -c "drop database if exists \"$PG_PREFECT_DB\""
    log "databases $PG_DB, $PG_PREFECT_DB dropped"
  fi
  postgres_down
  rm -rf "$STATE"
  log "state folder $STATE deleted"
}

cmd_logs() {
  local n=${1:-20} f
  for f in "$STATE"/logs/*.log; do [ -f "$f" ] && { echo "==> $f"; tail -n "$n" "$f"; }; done
}

case ${1:-} in
  up) cmd_up ;;
  service) service_up ;;
  service-down) stop_service; service_target remove ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  client-env) cmd_client_env ;;
  logs) shift; cmd_logs "$@" ;;
  purge) cmd_purge ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
