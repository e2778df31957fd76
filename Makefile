# medmlops — the two commands a new user needs:
#   make demo   create .venv, install, run the platform's main job on demo data
#   make test   create .venv if missing, install, run the test suite
# Installs are exact: requirements.lock pins every package (resolved once on this machine kind).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= demo
PYTEST_ARGS ?=

export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast lint format data validate clean help

help:
	@echo "make demo   - install and run the demo (data -> validation -> DVC check)"
	@echo "make test   - install and run the test suite"
	@echo "make lint   - ruff"

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --progress-bar off -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/medmlops demo --profile $(PROFILE)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The DVC pipeline (validate stages) over data/raw, as the demo leaves it.
validate: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

clean:
	rm -rf .pytest_cache .ruff_cache reports .medmlops
