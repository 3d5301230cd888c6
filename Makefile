# The two entry points of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use. torch is pinned to the CPU wheel this kind of machine
# carries; on a GPU machine run e.g. `make test TORCH=torch` to take the registry's build.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: install demo test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/bitfront demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
