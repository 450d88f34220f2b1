#!/usr/bin/env bash
# The test suite, as CI runs it: lint, then pytest on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
. "${SLIMLINE_VENV:-.venv}/bin/activate"
ruff check src tests bench
ruff format --check src tests bench
export SLIMLINE_QUIET=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Convert the bundled models once before the workers start, so they do not race to convert.
slimline models prepare
exec python -m pytest -n 2 --timeout=900 "$@"
