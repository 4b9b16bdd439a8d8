# embedforge — two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing (or when pyproject.toml/constraints.txt changed) and are idempotent.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch pinned in the same pip command: this machine then takes the local CPU build
# instead of a multi-GB CUDA wheel.
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,dev
PYTEST_ARGS ?=
DEMO_DIR ?= runs/demo

.PHONY: venv test test-fast lint docs-check demo clean help
.DEFAULT_GOAL := help

help:
	@echo "make test   - create $(VENV), install embedforge[$(EXTRAS)], run the whole test suite"
	@echo "make demo   - create $(VENV) and run the pipeline end to end on the bundled sample data"
	@echo "make test-fast - only tests not marked slow"
	@echo "make lint   - ruff"
	@echo "make docs-check - links, job flags and paths named in README.md and docs/ exist"

$(STAMP): pyproject.toml constraints.txt
	@echo ">> creating virtualenv $(VENV) with $(PYTHON)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing embedforge[$(EXTRAS)] with $(TORCH) (CPU build on CPU machines)"
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -c constraints.txt "$(TORCH)" -e ".[$(EXTRAS)]"
	@touch $(STAMP)
	@echo ">> $(VENV) ready"

venv: $(STAMP)

test: $(STAMP)
	@echo ">> lint (ruff)"
	$(PY) -m ruff check platform jobs tests benchmarks
	@$(MAKE) --no-print-directory docs-check
	@echo ">> running the whole test suite"
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check platform jobs tests benchmarks

docs-check: $(STAMP)
	@echo ">> docs-check (links, flags, paths in README.md and docs/)"
	$(PY) docs/check.py

demo: $(STAMP)
	@echo ">> running the demo pipeline into $(DEMO_DIR)"
	$(PY) jobs/pipeline.py --config jobs/configs/demo.yaml --output $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs .pytest_cache
