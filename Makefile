# edgefleet: plain `make` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVICES ?= devices.yaml
DATA   ?= .edgefleet

.DEFAULT_GOAL := help
.PHONY: help run test test-fast test-loaded figures check bench clean venv

help:  ## list the targets
	@echo "edgefleet make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project metadata changes; a second `make test` skips this.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project with its dev tools

run: $(STAMP)  ## start a fleet from devices.yaml with a live view (Ctrl-C stops it)
	$(BIN)/edgefleet run --devices $(DEVICES) --data $(DATA) --realtime --block-age 30s

test: $(STAMP)  ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## the quick loop: every test not marked slow (no fleets, brokers, processes)
	$(BIN)/python -m pytest -q -m "not slow"

test-loaded: $(STAMP)  ## the whole suite with a CPU hog on every core beside it (it must pass)
	$(BIN)/python -m tests.hog -- $(BIN)/python -m pytest -q

figures: $(STAMP)  ## run the fault-matrix tests and print their figures (figures.json)
	$(BIN)/python -m pytest -q -m figures --figures-json=figures.json

check: $(STAMP)  ## ruff, mypy (strict on ledger/) and the import-direction check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python tests/importcheck.py

bench: $(STAMP)  ## run every benchmark and print their JSON
	@for b in bench/[a-z]*.py; do m=$$(basename $$b .py); \
	  echo "== bench.$$m"; $(BIN)/python -m bench.$$m --json || exit 1; done

clean:  ## remove the venv, caches and the default data dir
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(DATA) build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
