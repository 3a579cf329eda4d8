#!/usr/bin/env bash
# On the GPU machine (no network): build the patched llama-cpp-python with CUDA from a carried,
# trimmed sdist plus wheels in $1 (default .gpu/), then run the equivalence tests fully offloaded.
# Logs go to $OUT (or /tmp/out). Usage: bash benchmarks/gpu_check.sh [.gpu] [pytest args...]
# Make the carried folder here first (it stays out of git: echo /.gpu/ >> .git/info/exclude):
#   the sdist from .cache/, unpacked, minus .git, vendor/llama.cpp/{models,docs,media,benches,tools/ui,
#   tests,examples,conversion,gguf-py,scripts,tools/server} and ggml/src/ggml-{et,metal,hexagon,sycl,
#   vulkan,opencl}, re-packed as .gpu/sdist.tgz (~6 MB); and the wheels gguf and diskcache:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .gpu gguf==0.19.0 diskcache
set -euo pipefail
CARRY=${1:-.gpu}; shift || true
ROOT=$PWD; LOG=${OUT:-/tmp/out}; mkdir -p "$LOG"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/*.whl
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1
rm -rf /tmp/b && mkdir -p /tmp/b && tar xzf "$CARRY/sdist.tgz" -C /tmp/b
SRC=$(echo /tmp/b/llama_cpp_python-*)
for p in "$ROOT"/patches/*.patch; do patch -d "$SRC" -p1 --forward --batch --fuzz=0 -s < "$p"; done
echo "== building (CUDA) $(date +%T)"
( cd "$SRC" && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF \
    -DCMAKE_SHARED_LINKER_FLAGS=-Wl,--exclude-libs,ALL \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps --target /tmp/site . \
    > "$LOG/build.log" 2>&1 ) || { tail -40 "$LOG/build.log"; exit 1; }
echo "== built $(date +%T); exported non-ggml symbols of libggml-cuda.so:" \
    "$(nm -D --defined-only /tmp/site/llama_cpp/lib/libggml-cuda.so | awk '{print $3}' | grep -vc '^ggml_' || true)"
for l in /tmp/site/llama_cpp/lib/lib*.so; do
    echo "   $(basename $l): $(nm -D --defined-only $l | c++filt | grep -c 'std::') exported std:: symbols"
done
python3 -m models.gguf_gen /tmp/t.gguf --preset tiny
if python3 -c "from hogwild_cpp.native import Model; Model('/tmp/t.gguf', n_gpu_layers=99); print('== a model loads fully offloaded, no LD_PRELOAD')"; then :
else
    echo "== LOADING CRASHES WITHOUT LD_PRELOAD; going on with libstdc++ preloaded"
    export LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6)
fi
HOGWILD_TEST_NGL=99 HOGWILD_TEST_NO_DEFAULT_MODEL=1 python3 -m pytest -q -p no:cacheprovider \
    tests/test_cache.py tests/test_models_gen.py "$@" 2>&1 | tee "$LOG/tests.log"

# benchmarks (skip with HOGWILD_GPU_BENCH=0): random Q4_0 models generated here, all layers offloaded
[[ "${HOGWILD_GPU_BENCH:-1}" == 1 ]] || exit 0
DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
for spec in "1b 1,2,4,8 1024,8192" "8b 1,2,4 1024"; do
    set -- $spec
    echo "== bench $1 $(date +%T)"
    python3 -m models.gguf_gen /tmp/$1.gguf --preset $1 --dtype q4_0 --n-ctx-train 16384
    timeout 200 python3 cli.py bench /tmp/$1.gguf -np $2 --ctx $3 --steps 20 -ngl 99 --device "$DEV" \
        --json "$LOG/bench-$1.json" 2>&1 | tee "$LOG/bench-$1.md" || echo "bench $1 stopped early"
    rm -f /tmp/$1.gguf
done
