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

.PHONY: sandbox install demo test

sandbox:
	@sh .ci/ensure-sandbox

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: sandbox install
	$(BIN)/bitfront demo

test: sandbox install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
