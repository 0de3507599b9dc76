#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (runtime + dev extra) with uv, keeping the current pins where they
# still fit. uv ignores pip's configuration: hand it the local wheel folder pip is configured with, as setup.sh
# does, or it resolves torch to the multi-GB CUDA build instead of torch==2.13.0+cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
links=()
for key in global.find-links :env:.find-links; do
  v=$("$VENV/bin/python" -m pip config get "$key" 2>/dev/null || true)
  [ -n "$v" ] && links+=(--find-links "$v")
done
"$VENV/bin/uv" pip compile pyproject.toml --extra dev --python 3.11 -q "${links[@]}" -o requirements.lock
