#!/usr/bin/env bash
# Run the whole test suite (all tiers) with the project's venv; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec .venv/bin/python -m pytest "$@"
