#!/usr/bin/env bash
# Create .venv/ at the repo root and install the locked dependency set plus mixllm (editable).
# A repeat run is a no-op unless requirements.lock or pyproject.toml changed (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP=$VENV/.mixllm-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==0.13.9"
# uv ignores pip's configuration: hand it the local wheel folder pip is configured with, so that
# torch==2.13.0+cpu comes from disk and never as a multi-GB CUDA build.
links=()
for key in global.find-links :env:.find-links; do
  v=$("$VENV/bin/python" -m pip config get "$key" 2>/dev/null || true)
  [ -n "$v" ] && links+=(--find-links "$v")
done
export UV_LINK_MODE=copy
if ! "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "${links[@]}" -r requirements.lock; then
  echo "[setup] uv failed; falling back to pip (slower)" >&2
  "$VENV/bin/python" -m pip install -q -r requirements.lock
fi
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps -e .
echo "$want" > "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import mixllm; print("mixllm", mixllm.__version__)')"
