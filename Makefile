# The README's two commands: `make demo` and `make test`. Both set up their
# own virtual environment from the project's files alone.
PY     ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,ucx,hf

.PHONY: venv system test test-fast lint demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

# Debian packages the tests and benchmarks use (servers for baselines).
system:
	bash scripts/install_system.sh

lint: venv
	$(BIN)/ruff check .

test: venv system lint
	$(BIN)/python -m pytest -q

test-fast: venv lint
	$(BIN)/python -m pytest -q -m "not slow" -x

demo: venv
	$(BIN)/python -m kvstore.demo

clean:
	rm -rf $(VENV) build dist *.egg-info
