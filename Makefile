# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MEDCLAVE_VECTORS ?= $(abspath ../shared/vectors)
export MEDCLAVE_TLOG_VECTORS ?= $(abspath ../shared/tlog-vectors)

.PHONY: install test lint bench demo clean

install: $(STAMP)

# Re-installs only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks

demo: install
	$(BIN)/python -m medclave.demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
