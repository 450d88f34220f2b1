#!/usr/bin/env bash
# The test suite, as CI runs it: lint, then pytest on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
. "${SLIMLINE_VENV:-.venv}/bin/activate"
ruff check src tests bench
ruff format --check src tests bench
# The suite writes up to ~0.6 GB of artifacts at a time under the temp dir (a passed test's are
# removed as it ends); say so plainly instead of failing 30 tests with ENOSPC.
tmp_dir=${TMPDIR:-/tmp}
free_mb=$(df -Pm "$tmp_dir" | awk 'NR==2 {print $4}')
if [ "${free_mb:-0}" -lt 1500 ]; then
  echo "error: ${free_mb} MB free under $tmp_dir; the tests need about 1.5 GB there" \
    "(fix: free space on that disk, or point TMPDIR at a larger one)" >&2
  exit 1
fi
export SLIMLINE_QUIET=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Convert the bundled models once before the workers start, so they do not race to convert.
slimline models prepare
exec python -m pytest -n 2 --timeout=900 "$@"
