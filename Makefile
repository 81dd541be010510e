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
	@if $(VENV)/bin/pyramidflow demo --help >/dev/null 2>&1; then \
		$(VENV)/bin/pyramidflow demo; \
	else \
		mkdir -p outputs && \
		$(VENV)/bin/pyramidflow schedule --stages 3 --steps 20,20,20 --plot outputs/schedule.png && \
		$(VENV)/bin/pyramidflow flops --preset wan2.1-t2v-1.3b --frames 81 --height 448 --width 832 --steps 20-20-10; \
	fi

bench: setup
	$(PY) bench/bench_renoise.py
	$(PY) bench/bench_sampler_overhead.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
