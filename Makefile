# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run demo test lint bench clean

install: $(STAMP)

# torch is pinned on its own line first: a bare requirement would pull a multi-GB CUDA
# build, while 2.13.0 is the CPU build the project is tested with (see docs/models.md).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Build the demo shop, show a few answers, then serve it over HTTP (Ctrl-C stops it).
run: install
	$(BIN)/shoplm demo --out .shoplm/demo
	$(BIN)/shoplm serve --engine .shoplm/demo/engine --host 127.0.0.1 --port 8000

test: install lint
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) .shoplm .pytest_cache .ruff_cache
