# pyramidflow: two commands.
#   make demo   set up .venv and run the demo on the shipped tiny model (CPU is enough)
#   make test   set up .venv and run lint + the test suite
#
# PyTorch is installed first, pinned, so that pip never pulls an unexpected build.
# CPU-only machine:   make test                      (uses TORCH below)
# GPU machine:        make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# Existing env:       make test VENV=/path/to/venv   (torch already installed there is kept)

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pyramidflow-installed

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check pyramidflow tests bench

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

demo: setup
	$(VENV)/bin/pyramidflow demo

bench: setup
	$(PY) bench/bench_renoise.py
	$(PY) bench/bench_sampler_overhead.py
	$(PY) bench/bench_pyramid_flow.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
