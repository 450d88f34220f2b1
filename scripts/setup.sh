#!/usr/bin/env bash
# Create the virtualenv (.venv; SLIMLINE_VENV overrides) holding exactly requirements.lock, plus
# slimline itself in editable mode. Idempotent: a second run with nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lockfile.sh
. scripts/lockfile.sh
PY=${PYTHON:-python3}
VENV=${SLIMLINE_VENV:-.venv}

fail() { printf 'error: %s\n  fix: %s\n' "$1" "$2" >&2; exit 1; }

# The lock was resolved for one interpreter: another one may lack wheels for its pins.
want_py=$(sed -n 's/^# Generated .* on CPython \([0-9]*\.[0-9]*\).*/\1/p' "$LOCK")
have_py=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
  fail "cannot run $PY" "set PYTHON to a Python $want_py interpreter"
[ "$want_py" = "$have_py" ] || fail \
  "$LOCK was made for Python $want_py; $PY is $have_py" \
  "PYTHON=python$want_py make test (or, unlocked: pip install -e '.[dev]')"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
vpy="$VENV/bin/python"
stamp="$VENV/.slimline-setup"
want=$(cat pyproject.toml "$LOCK" scripts/setup.sh scripts/lockfile.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
rm -f "$stamp"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$vpy" -m pip install -q "$(lock_pins | grep -iE '^pip==')"

# Packages that compile from source are installed from their cached wheel, built once.
build_cached_wheels "$vpy"
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
lock_pins > "$reqs"
for name in $SOURCE_BUILDS; do
  pin=$(grep -iE "^${name}==" "$reqs" || true)
  [ -n "$pin" ] || continue
  grep -viE "^${name}==" "$reqs" > "$reqs.x" && mv "$reqs.x" "$reqs"
  cached_wheel "$pin" >> "$reqs"
done

# Exactly the lock: --no-deps, so pip resolves nothing outside it (pip check below proves the lock
# complete). torch's CPU build comes from this machine's wheel folder (pip's find-links).
"$vpy" -m pip install -q --no-deps -r "$reqs" || fail \
  "installing $LOCK failed (see pip's message above)" \
  "torch==2.13.0+cpu not found: add PyTorch's CPU wheel index with PIP_EXTRA_INDEX_URL; another pin: make lock"
"$vpy" -m pip install -q --no-deps --no-build-isolation -e .

# The environment must be the lock, no more and no less: leftovers from earlier installs or
# hand-installed packages would make a green run that a fresh machine cannot repeat.
have=$("$vpy" -m pip list --format=freeze --exclude-editable | grep -viE '^slimline( |==|@)' | canonical_pins)
want_pins=$(lock_pins | canonical_pins)
extra=$(LC_ALL=C comm -23 <(echo "$have") <(echo "$want_pins") | tr '\n' ' ')
missing=$(LC_ALL=C comm -13 <(echo "$have") <(echo "$want_pins") | tr '\n' ' ')
[ -z "$extra$missing" ] || fail \
  "$VENV differs from $LOCK (not in the lock: ${extra:-none}; missing: ${missing:-none})" \
  "rm -rf $VENV && make setup, or add the package to pyproject.toml and run make lock"
# Data-only packages were installed without their requirements: their complaints are expected.
problems=$("$vpy" -m pip check 2>&1 | grep -viE "^($(echo "$DATA_PACKAGES" | sed -E 's/==[^ ]*//g; s/ /|/g')) " |
  grep -v '^No broken requirements' || true)
[ -z "$problems" ] || fail "$LOCK is inconsistent: $problems" "regenerate it with make lock"
echo "$want" > "$stamp"
