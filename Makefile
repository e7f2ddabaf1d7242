# `make demo` and `make test` work on a fresh machine: they create .venv and install
# everything they need (Python packages from PyPI, Debian packages with apt-get).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test lint typecheck unit system-deps dashboards bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rtguard demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks dashboards
	$(BIN)/ruff format --check src tests benchmarks dashboards

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	$(BIN)/pytest -q

# Regenerate dashboards/rtguard.json after changing dashboards/generate.py (a test checks it).
dashboards: $(STAMP)
	$(BIN)/python dashboards/generate.py

# Prometheus, promtool and Alertmanager: the alert and dashboard tests run them for real.
system-deps:
	bash scripts/install-system-deps.sh

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks

soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
