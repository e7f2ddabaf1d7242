# `make demo` and `make test` work on a fresh machine: they create .venv and install
# everything they need (Python packages from PyPI, Debian packages with apt-get).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test lint typecheck unit docs docs-serve system-deps dashboards bench bench-voice soak e2e clean

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

# The documentation site (mkdocs.yml) into site/, in strict mode: a broken link or anchor, a
# page missing from the nav, or a reference to a symbol that no longer exists fails the build.
# `make unit` runs the same build (tests/test_docs.py). Material's banner about its successor
# is not a warning; it is silenced so that the build's own warnings stand out.
export NO_MKDOCS_2_WARNING := 1

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

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

# Voice sessions (S concurrent sessions streaming real-time audio in one process) and the
# telemetry cost on the tool-call path, into their own page (about 35 min); `--quick`
# instead of `--output ...` prints a smoke run in under a minute.
bench-voice: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks --only voice --only telemetry --output docs/benchmarks-voice.md

soak: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks.soak
	$(BIN)/python -m benchmarks.continuity

# rtguard's traces in a real trace UI (not part of `make test`: Phoenix is ~850 MB). Arize
# Phoenix runs from its own venv; headless Chromium (Debian's package) takes the screenshot
# that docs/operations.md shows. Every wait is bounded and Phoenix is stopped by its pid.
E2E_VENV ?= .venv-e2e
PHOENIX_VERSION ?= 20.26.1

$(E2E_VENV)/.installed:
	$(PYTHON) -m venv $(E2E_VENV)
	$(E2E_VENV)/bin/pip install -q --upgrade pip
	$(E2E_VENV)/bin/pip install -q 'arize-phoenix==$(PHOENIX_VERSION)'
	touch $@

e2e: $(STAMP) $(E2E_VENV)/.installed
	command -v chromium >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
	timeout 900 $(BIN)/python tests/e2e/phoenix_e2e.py --phoenix $(E2E_VENV)/bin/phoenix

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache site
