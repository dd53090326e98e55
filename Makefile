# Two commands for a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export VITQUANT_ASSETS ?= $(abspath ../shared)

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changed (a no-op when up to date).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/vitquant demo --out runs/demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	# --max-worker-restart=0: a crashed worker ends the run at once, naming its test (xdist's
	# loadfile scheduler can wait forever for a replacement worker's work).
	VITQUANT_QUIET=1 $(BIN)/pytest -q -n 2 --dist loadfile --max-worker-restart=0 --durations=25

lint: setup
	$(BIN)/ruff check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/analysis_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
