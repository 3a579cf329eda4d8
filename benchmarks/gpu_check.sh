#!/usr/bin/env bash
# On the GPU machine (no network): build the patched llama-cpp-python with CUDA from a carried,
# trimmed sdist plus wheels, run the equivalence tests fully offloaded, and benchmark.
#   bash benchmarks/gpu_check.sh [build] [test] [bench] [e2e] [split] [ab]   (default: build test bench)
# Logs and results go to $OUT (or /tmp/out).
#
# The carried folder ($HOGWILD_GPU_CARRY, default .gpu/) stays out of git (echo /.gpu/ >> .git/info/exclude):
#   sdist.tgz  the sdist from .cache/, unpacked, minus .git, vendor/llama.cpp/{models,docs,media,benches,
#              tools/ui,tests,examples,conversion,gguf-py,scripts,tools/server} and
#              ggml/src/ggml-{et,metal,hexagon,sycl,vulkan,opencl}, re-packed (~6 MB);
#   *.whl      pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --platform manylinux2014_x86_64 -d .gpu gguf==0.19.0 diskcache
# A first build takes about 5 minutes (H200, 16 cores). The build directory is kept (/tmp/skb) and
# only the source files a patch changed are rewritten, so a later call on the same warm machine with
# edited patches recompiles just those files.
# (The installed package is ~120 MB xz-compressed: too big to bring back and carry.)
# Environment: HOGWILD_GPU_FA=0 builds without CUDA flash-attention kernels (faster build, no
# flash-attention rows); HOGWILD_GPU_BENCH lists preset:workers:contexts runs (8k contexts run with
# CUDA graphs off: benchmarks/RESULTS.md, the stock CUDA-graph crash); HOGWILD_GPU_BENCH_FLAGS adds
# bench flags (default: -fa both --kernels); HOGWILD_GPU_DRAFTS lists patches applied after the series (e.g.
# patches/next/*.patch: drafts not yet checked on a GPU, which neither `make` nor this script applies otherwise).
# The ab phase benches the drafts against the series: builds with them, without, with again (the second and third
# builds recompile only the files the drafts touch: ~2 minutes for mmvq.cu), one `bench` each
# (HOGWILD_GPU_AB_FLAGS, default -np 1,2,4,8 -d 1024 --steps 40 -fa on), the build with the drafts left in place;
# after each build, benchmarks/batch_logits.py writes a Q4_0 model's logits for 1-9 token batches (the first two
# builds' are compared bit for bit: ab-logits.txt), and the e2e phase runs (HOGWILD_GPU_AB_E2E, default 8b:1,2,4,8,
# 200 steps, into ab-N-side/; empty: none).
set -euo pipefail
CARRY=${HOGWILD_GPU_CARRY:-.gpu}
PHASES=${*:-build test bench}
ROOT=$PWD; LOG=${OUT:-/tmp/out}; mkdir -p "$LOG"
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1
FA=$([[ "${HOGWILD_GPU_FA:-1}" == 1 ]] && echo ON || echo OFF)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DGGML_CUDA_FA=$FA -DLLAVA_BUILD=OFF \
-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--exclude-libs,ALL -DGGML_RPC=ON \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
DRAFTS=()
for d in ${HOGWILD_GPU_DRAFTS:-}; do DRAFTS+=("$ROOT/$d"); done

install_build() {  # [draft patch ...]: the series, then these
    local drafts=("$@") KEY
    KEY=$( (cat "$ROOT"/patches/*.patch ${drafts[@]+"${drafts[@]}"}; echo "$CMAKE_ARGS") | sha256sum | cut -c1-16)
    [[ -f /tmp/site/.hogwild-key && "$(cat /tmp/site/.hogwild-key)" == "$KEY" ]] && return
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/*.whl
    # patch a fresh copy, then update /tmp/b only where a file changed: unchanged files keep their
    # time stamps and are not recompiled
    rm -rf /tmp/b.new && mkdir -p /tmp/b.new /tmp/b && tar xzf "$CARRY/sdist.tgz" -C /tmp/b.new
    local src; src=$(echo /tmp/b.new/llama_cpp_python-*)
    for p in "$ROOT"/patches/*.patch ${drafts[@]+"${drafts[@]}"}; do
        patch -d "$src" -p1 --forward --batch --fuzz=0 -s < "$p" || { echo "== $p does not apply"; exit 1; }
    done
    if (( ${#drafts[@]} )); then echo "== drafts applied: ${drafts[*]}"; fi
    (cd /tmp/b.new && find . -type f) | while read -r f; do
        cmp -s "/tmp/b.new/$f" "/tmp/b/$f" || { mkdir -p "$(dirname "/tmp/b/$f")"; cp -p "/tmp/b.new/$f" "/tmp/b/$f"; touch "/tmp/b/$f"; }
    done
    src=$(echo /tmp/b/llama_cpp_python-*)
    echo "== building (CUDA, flash attention $FA) $(date +%T)"
    ( cd "$src" && CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=16 \
        python3 -m pip install --no-build-isolation --no-deps --upgrade -C build-dir=/tmp/skb --target /tmp/site . \
        > /tmp/build.log 2>&1 ) || { tail -40 /tmp/build.log; exit 1; }
    echo "== built $(date +%T)"
    echo "$KEY" > /tmp/site/.hogwild-key
}

check_build() {
    for l in /tmp/site/llama_cpp/lib/lib*.so; do
        echo "   $(basename "$l"): $(nm -D --defined-only "$l" | c++filt | grep -c 'std::' || true) exported std:: symbols"
    done
    python3 -m models.gguf_gen /tmp/t.gguf --preset tiny
    python3 -c "from hogwild_cpp.native import Model; Model('/tmp/t.gguf', n_gpu_layers=99); print('== a model loads fully offloaded, no LD_PRELOAD')"
}

run_tests() {
    # the exactness run: with TF32 off, stock CUDA results do not depend on the batch size
    echo "== tests, GGML_CUDA_NO_TF32=1 $(date +%T)"
    GGML_CUDA_NO_TF32=1 HOGWILD_TEST_NGL=99 HOGWILD_TEST_NO_DEFAULT_MODEL=1 python3 -m pytest -q -p no:cacheprovider \
        -rs tests/test_cache.py tests/test_families.py tests/test_models_gen.py 2>&1 | tee "$LOG/tests.log" || true
    echo "== the GPU-only tests, verbose $(date +%T)"
    HOGWILD_TEST_NGL=99 HOGWILD_TEST_NO_DEFAULT_MODEL=1 python3 -m pytest -q -s -p no:cacheprovider -k cuda \
        tests/test_cache.py 2>&1 | tee "$LOG/tests-gpu.log" || true
    # for the record: CUDA's default (TF32) against the plain tolerances; failures here are stock noise
    echo "== tests, TF32 on (informational) $(date +%T)"
    HOGWILD_TEST_NGL=99 HOGWILD_TEST_NO_DEFAULT_MODEL=1 python3 -m pytest -q --tb=no -rf -p no:cacheprovider \
        tests/test_cache.py > "$LOG/tests-tf32.log" 2>&1 || true
    grep -E "passed|failed" "$LOG/tests-tf32.log" | tail -1
}

run_bench() {
    local dev; dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
    local flags=${HOGWILD_GPU_BENCH_FLAGS:-"-fa both --kernels"}
    [[ $FA == ON ]] || flags=${flags//-fa both/-fa off}
    for spec in ${HOGWILD_GPU_BENCH:-8b:1,2,4,8:1024 8b:1,2,4,8:8192 32b:2,4,8:1024}; do
        IFS=: read -r preset workers ctxs <<< "$spec"
        local graphs=1 label=$dev
        for c in ${ctxs//,/ }; do (( c >= 8192 )) && graphs=0 && label=$dev-nographs; done
        echo "== bench $preset $workers $ctxs $(date +%T)"
        [[ -f /tmp/$preset.gguf ]] || python3 -m models.gguf_gen /tmp/$preset.gguf --preset "$preset" --dtype q4_0 --n-ctx-train 16384
        local tag="$preset-${ctxs//,/-}"
        env $([[ $graphs == 0 ]] && echo GGML_CUDA_DISABLE_GRAPHS=1) python3 cli.py bench /tmp/$preset.gguf -np "$workers" \
            -d "$ctxs" --steps 20 -ngl 99 --device "$label" $flags --json "$LOG/bench-$tag.json" 2>&1 \
            | tee "$LOG/bench-$tag.md" || echo "bench $preset stopped early"
    done
}

run_e2e() {
    # hogwild run's own loop (bench --e2e): aggregate tokens/s against W=1, ms per step, its decode share.
    # The models have the protocol's word pieces in their vocabulary (gguf_gen --words: a step's label is
    # 7 tokens, as in real vocabularies); HOGWILD_GPU_E2E_VOCAB=bytes spells every text byte by byte instead
    local dev; dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
    local vocab=${HOGWILD_GPU_E2E_VOCAB:-words}
    for spec in ${HOGWILD_GPU_E2E:-8b:1,2,4,8 32b:1,2,4}; do
        IFS=: read -r preset workers <<< "$spec"
        local model=/tmp/$preset-$vocab.gguf
        [[ -f $model ]] || python3 -m models.gguf_gen "$model" --preset "$preset" --dtype q4_0 --n-ctx-train 16384 \
            $([[ $vocab == words ]] && echo --words)
        echo "== e2e $preset ($vocab) $workers $(date +%T)"
        python3 cli.py bench "$model" --e2e -np "$workers" --steps ${HOGWILD_GPU_E2E_STEPS:-256} \
            --step-tokens 24 -c 8192 -ngl 99 --device "$dev" --json "$LOG/e2e-$preset-$vocab.json" 2>&1 \
            | tee "$LOG/e2e-$preset-$vocab.md" || echo "e2e $preset stopped early"
    done
}

run_split() {
    # two GPUs (nvidia-h200-x2): the equivalence tests with the models split by layer and by row, then the
    # 32B shape split over both against one GPU
    local dev; dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
    for mode in layer row; do
        echo "== tests split by $mode over $(nvidia-smi -L | wc -l) GPUs $(date +%T)"
        GGML_CUDA_NO_TF32=1 HOGWILD_TEST_NGL=99 HOGWILD_TEST_SPLIT=$mode HOGWILD_TEST_NO_DEFAULT_MODEL=1 \
            python3 -m pytest -q -p no:cacheprovider tests/test_cache.py tests/test_families.py 2>&1 \
            | tee "$LOG/tests-split-$mode.log" | tail -3 || true
    done
    [[ -f /tmp/32b.gguf ]] || python3 -m models.gguf_gen /tmp/32b.gguf --preset 32b --dtype q4_0 --n-ctx-train 16384
    for spec in "one:0:-sm none" "two:0,1:-sm layer"; do
        IFS=: read -r label gpus flags <<< "$spec"
        echo "== bench 32b on $label GPU(s) $(date +%T)"
        CUDA_VISIBLE_DEVICES=$gpus python3 cli.py bench /tmp/32b.gguf -np 1,2,4 --ctx 1024 --steps 20 -ngl 99 $flags \
            -fa on --device "$dev-$label" --json "$LOG/bench-32b-$label.json" 2>&1 | tee "$LOG/bench-32b-$label.md" \
            | grep -v "^bench:" || echo "bench $label stopped early"
    done
}

run_ab() {
    (( ${#DRAFTS[@]} )) || { echo "ab: no drafts (HOGWILD_GPU_DRAFTS)"; return 1; }
    local dev; dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
    [[ -f /tmp/8b.gguf ]] || python3 -m models.gguf_gen /tmp/8b.gguf --preset 8b --dtype q4_0 --n-ctx-train 16384
    local n=0 side
    for side in with without with; do
        n=$((n + 1))
        if [[ $side == with ]]; then install_build "${DRAFTS[@]}"; else install_build; fi
        echo "== ab $n: $side the drafts $(date +%T)"
        python3 benchmarks/batch_logits.py "$LOG/ab-$n-$side.npz" || echo "ab logits $n failed"
        python3 cli.py bench /tmp/8b.gguf ${HOGWILD_GPU_AB_FLAGS:--np 1,2,4,8 -d 1024 --steps 40 -fa on} -ngl 99 \
            --device "$dev-$side-drafts" --json "$LOG/ab-$n-$side.json" 2>&1 | tee "$LOG/ab-$n-$side.md" \
            | grep -v "^bench:" || echo "ab bench $n stopped early"
        if [[ -n ${HOGWILD_GPU_AB_E2E-8b:1,2,4,8} ]]; then  # and the run's own loop (shadow buckets, label decodes)
            mkdir -p "$LOG/ab-$n-$side"
            LOG=$LOG/ab-$n-$side HOGWILD_GPU_E2E=${HOGWILD_GPU_AB_E2E-8b:1,2,4,8} HOGWILD_GPU_E2E_STEPS=200 run_e2e \
                | grep -v "^bench:" || echo "ab e2e $n stopped early"
        fi
    done
    # drafts that only change speed must not change a bit of the logits
    python3 benchmarks/batch_logits.py --compare "$LOG/ab-1-with.npz" "$LOG/ab-2-without.npz" | tee "$LOG/ab-logits.txt" || true
}

install_build ${DRAFTS[@]+"${DRAFTS[@]}"}
for phase in $PHASES; do
    case $phase in
        build) check_build ;;
        test) run_tests ;;
        bench) run_bench ;;
        e2e) run_e2e ;;
        split) run_split ;;
        ab) run_ab ;;
        *) echo "unknown phase $phase"; exit 2 ;;
    esac
done
