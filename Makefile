# The two commands of README.md. Each creates .venv (Python >= 3.10) and installs gen_jax on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# test processes (pytest-xdist): most tests wait on single-threaded XLA compilation, so 2 workers on 2 cores
# take ~0.7x the time of one; more on bigger machines (make test TEST_WORKERS=8)
TEST_WORKERS ?= 2

.PHONY: demo test test-all install clean

demo: $(VENV)/.installed  ## train every family on the ring of 8 Gaussians -> runs/quickstart/
	$(PY) -m experiments.quickstart --workdir runs/quickstart

test: $(VENV)/.installed  ## the fast test suite (what CI runs), listing its 15 slowest tests
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

test-all: $(VENV)/.installed  ## including tests marked slow
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m ''

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "gen_jax needs Python >= 3.10"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) runs
