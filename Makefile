# The two entry points of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use. torch is pinned to the CPU wheel this kind of machine
# carries; on a GPU machine run e.g. `make test TORCH=torch` to take the registry's build.
# Both first make sure the sandbox of `bitfront eval` can run (bubblewrap, libseccomp,
# prlimit): installed when missing and this user can (root or passwordless sudo), else a
# one-line instruction within seconds, before any other work.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

# llama.cpp (the `llama` extra) is built from source for this machine's CPU without -march=native
# (a native build crashed in llama_decode on a CPU with AMX): each x86 extension on only where
# /proc/cpuinfo lists it (AVX-512 where all five of ggml's base set are), no multimodal library.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
cpu_has    = $(if $(strip $(foreach f,$(1),$(if $(filter $(f),$(CPU_FLAGS)),,x))),OFF,ON)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF \
	-DGGML_SSE42=$(call cpu_has,sse4_2) -DGGML_AVX=$(call cpu_has,avx) \
	-DGGML_AVX2=$(call cpu_has,avx2) -DGGML_FMA=$(call cpu_has,fma) \
	-DGGML_F16C=$(call cpu_has,f16c) -DGGML_BMI2=$(call cpu_has,bmi2) \
	-DGGML_AVX512=$(call cpu_has,avx512f avx512cd avx512vl avx512dq avx512bw) \
	-DGGML_AVX512_VBMI=$(call cpu_has,avx512f avx512vbmi) \
	-DGGML_AVX512_VNNI=$(call cpu_has,avx512f avx512_vnni) \
	-DGGML_AVX512_BF16=$(call cpu_has,avx512f avx512_bf16)

.PHONY: sandbox install demo test

sandbox:
	@sh .ci/ensure-sandbox

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v c++ >/dev/null 2>&1 || { echo "error: the llama extra builds llama.cpp, which needs a C++ compiler: install one (e.g. 'sudo apt-get install g++'), then run make again" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e ".[dev,llama]"
	touch $@

demo: sandbox install
	$(BIN)/bitfront demo

test: sandbox install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
