# pyramidflow: three commands.
#   make demo   set up .venv and run the demo on the shipped tiny model (CPU is enough)
#   make test   set up .venv (with the app extra) and run lint + the test suite
#   make app    set up .venv with the app extra and serve the web app on http://127.0.0.1:7860
#
# The browser test (tests/test_app_browser.py) also needs Chromium: `apt-get install chromium`
# (.ci/run does it); without it, and outside CI, that test is skipped.
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
APP_STAMP := $(VENV)/.pyramidflow-app-installed

.PHONY: setup setup-app test lint demo app bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The app extra (Gradio) pins pillow<13, and the browser test needs Playwright: installed for the
# tests and the app, not for the demo.
setup-app: $(APP_STAMP)

$(APP_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,app,browser]"
	touch $(APP_STAMP)

lint: setup
	$(VENV)/bin/ruff check pyramidflow tests bench

test: lint setup-app
	$(PY) -m pytest -q -p no:cacheprovider

demo: setup
	$(VENV)/bin/pyramidflow demo

app: setup-app
	$(VENV)/bin/pyramidflow app

bench: setup
	$(PY) bench/bench_renoise.py
	$(PY) bench/bench_sampler_overhead.py
	$(PY) bench/bench_pyramid_flow.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
