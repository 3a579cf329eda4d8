#!/usr/bin/env bash
# On the GPU machine (no network): build the patched llama-cpp-python with CUDA from a carried,
# trimmed sdist plus wheels in $1 (default .gpu/), then run the equivalence tests fully offloaded.
# Logs go to $OUT (or /tmp/out). Usage: bash benchmarks/gpu_check.sh [.gpu] [pytest args...]
set -euo pipefail
CARRY=${1:-.gpu}; shift || true
ROOT=$PWD; LOG=${OUT:-/tmp/out}; mkdir -p "$LOG"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/*.whl
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1
rm -rf /tmp/b && mkdir -p /tmp/b && tar xzf "$CARRY/sdist.tgz" -C /tmp/b
SRC=$(echo /tmp/b/llama_cpp_python-*)
for p in "$ROOT"/patches/*.patch; do patch -d "$SRC" -p1 --forward --batch --fuzz=0 -s < "$p"; done
echo "== building (CUDA) $(date +%T)"
( cd "$SRC" && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps --target /tmp/site . \
    > "$LOG/build.log" 2>&1 ) || { tail -40 "$LOG/build.log"; exit 1; }
echo "== built $(date +%T); exported non-ggml symbols of libggml-cuda.so:" \
    "$(nm -D --defined-only /tmp/site/llama_cpp/lib/libggml-cuda.so | awk '{print $3}' | grep -vc '^ggml_' || true)"
HOGWILD_TEST_NGL=99 HOGWILD_TEST_NO_DEFAULT_MODEL=1 python3 -m pytest -q -p no:cacheprovider \
    tests/test_cache.py tests/test_models_gen.py "$@" 2>&1 | tee "$LOG/tests.log"
