#!/usr/bin/env bash
# Run the whole test suite (all tiers) with the project's venv; extra arguments go to pytest.
#
# The `servers` tier needs the real PostgreSQL, MLflow server, Prefect server + worker from infra/: they are started
# here first (`infra/services.sh up` installs Debian's postgresql/chromium when missing and is a no-op when they are
# already healthy) and stopped afterwards only if this run started them. MIXLLM_SKIP_SERVERS=1 skips that tier on
# purpose (its tests then skip, saying so).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

started=0
if [ "${MIXLLM_SKIP_SERVERS:-0}" != "1" ]; then
  if ! infra/services.sh status 2>/dev/null | grep -qE '^prefect +up'; then
    started=1
  fi
  infra/services.sh up || { echo "[test] infra/services.sh up failed (see above); set MIXLLM_SKIP_SERVERS=1 to run without the servers tier" >&2; exit 3; }
  eval "$(infra/services.sh env)"
fi

.venv/bin/python -m pytest "$@"
rc=$?
if [ "$started" = "1" ] && [ "${MIXLLM_KEEP_SERVERS:-0}" != "1" ]; then
  infra/services.sh down >/dev/null 2>&1 || true
fi
exit $rc
