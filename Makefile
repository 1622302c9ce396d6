# PlayListAI. `make demo` runs the pipeline on the embedded defaults; `make test` passes the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

SIZE ?= default
DATA_DIR ?= data
SEED ?= 42
# the experiment is created first so that its artifacts go to ./mlartifacts (see playlistai/tracking.py)
MLFLOW_RUN := $(PY) -m playlistai.tracking >/dev/null && $(VENV)/bin/mlflow run . --env-manager local --experiment-name playlistai

.PHONY: setup data preprocess splits test lint demo clean

# Idempotent: reinstalls only when pyproject.toml changed. torch first, pinned, so that pip takes
# the CPU wheel instead of resolving a multi-GB CUDA build through another package.
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

data: $(STAMP)
	$(MLFLOW_RUN) -e data -P size=$(SIZE) -P seed=$(SEED) -P data_dir=$(DATA_DIR)

preprocess: $(STAMP)
	$(MLFLOW_RUN) -e preprocess -P data_dir=$(DATA_DIR)

splits: $(STAMP)
	$(MLFLOW_RUN) -e splits -P data_dir=$(DATA_DIR)

demo: $(STAMP)
	$(MAKE) data preprocess splits

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check playlistai entrypoints tests

clean:
	rm -rf $(DATA_DIR) mlartifacts mlflow.db
