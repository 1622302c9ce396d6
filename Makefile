# PlayListAI. `make demo` runs the pipeline on the embedded defaults (`make demo-quick`: on tiny data, in
# minutes); `make test` passes the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

SIZE ?= default
DATA_DIR ?= data
SEED ?= 42
# engine of preprocess and splits: pandas, or ray (Ray Data on RAY_ADDRESS or a local Ray)
ENGINE ?= pandas
# `$(TRACKING_ENV) <command>` runs the command with the tracking URI and experiment of the settings
# (environment or .env; see playlistai/tracking.py, which prints them without importing mlflow).
TRACKING_ENV := mlflow_env=$$($(PY) -m playlistai.tracking --shell) && eval "$$mlflow_env" &&
# `$(MLFLOW_RUN) -e <stage> -P ...` is `mlflow run . -e <stage> --env-manager local -P ...` with the
# tracking URI and experiment of the settings: the same `mlflow.projects.run` call and the same runs,
# without the `mlflow` command's 3-4 s of start-up (playlistai/launch.py)
MLFLOW_RUN := $(PY) -m playlistai.launch .

.PHONY: setup data preprocess splits test lint demo demo-quick clean

# Idempotent: reinstalls only when pyproject.toml changed. torch first, pinned, so that pip takes
# the CPU wheel instead of resolving a multi-GB CUDA build through another package.
setup: $(STAMP)
# pip's own lines and, in a terminal, its download and install bars say how far it is.
$(STAMP): pyproject.toml
	@echo "setup: a virtual environment in $(VENV) (about 2.7 GB; 2-5 minutes on 2 cores): pip, torch 2.13 (CPU), then the project"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	touch $(STAMP)
	@echo "setup: done"

data: $(STAMP)
	$(MLFLOW_RUN) -e data -P size=$(SIZE) -P seed=$(SEED) -P data_dir=$(DATA_DIR)

preprocess: $(STAMP)
	$(MLFLOW_RUN) -e preprocess -P data_dir=$(DATA_DIR) -P engine=$(ENGINE)

splits: $(STAMP)
	$(MLFLOW_RUN) -e splits -P data_dir=$(DATA_DIR) -P engine=$(ENGINE)

# the whole pipeline on the defaults (registry section below), then the API of the production alias
demo: $(STAMP)
	$(MAKE) pipeline
	@echo "serving models:/playlistai@production on http://$(API_HOST):$(API_PORT) (Ctrl-C stops it)"
	$(MAKE) api

# `make demo` in minutes instead of hours: the tiny synthetic data and two epochs, a first look at
# every stage and at the summary, not figures to judge a model by. Into data/tiny, so that the
# default data `make demo` trains on stays as it is.
QUICK_EPOCHS ?= 2
demo-quick: $(STAMP)
	$(MAKE) demo SIZE=tiny EPOCHS=$(QUICK_EPOCHS) DATA_DIR=$(DATA_DIR)/tiny

test: $(STAMP)
	$(VENV)/bin/pytest -q

# every Python folder; the rules are in pyproject.toml ([tool.ruff.lint])
LINT_PATHS := playlistai entrypoints tests serving monitoring reliability bench docs
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)

clean:
	rm -rf $(DATA_DIR) mlartifacts mlflow.db

# -- evaluation: `make eval MODEL_URI=runs:/<id>/checkpoint` (empty = baselines and oracle only)
MODEL_URI ?=
SPLIT ?= test
BENCH_DATA_ROOT ?= data/bench
.PHONY: eval bench-eval

eval: $(STAMP)
	$(MLFLOW_RUN) -e evaluate -P data_dir=$(DATA_DIR) -P split=$(SPLIT) -P model_uri=$(MODEL_URI)

bench-eval: $(STAMP)
	$(PY) bench/bench_eval.py --sizes default,large --data-root $(BENCH_DATA_ROOT)

# -- registry: the whole pipeline, registration, promotion and rollback (README "Registry")
MODELS ?= sasrec,gru4rec
EPOCHS ?= 0
NUM_WORKERS ?= 0
RUN_ID ?=
VERSION ?=
PROMOTE ?= auto
.PHONY: pipeline register export promote rollback

# `make pipeline SOURCE=/path/plays.csv DATA_ARGS="-P user_col=listener -P ts_col=played_at"`: the same on a
# log file of one's own, into data/<file name> (DATA_DIR=... on the command line picks another folder)
SOURCE ?=
DATA_ARGS ?=
pipeline: $(STAMP)
	$(MLFLOW_RUN) -e main -P size=$(SIZE) -P seed=$(SEED) -P models=$(MODELS) -P epochs=$(EPOCHS) \
	  -P num_workers=$(NUM_WORKERS) $(if $(SOURCE),-P source=$(SOURCE) $(DATA_ARGS)) \
	  $(if $(and $(SOURCE),$(filter file default,$(origin DATA_DIR))),,-P data_dir=$(DATA_DIR))

# `make register` (alias `make export`): package the latest finished training run on DATA_DIR's splits
# as a pyfunc model, register it and gate it; `RUN_ID=<training run>` picks another run
register: $(STAMP)
	run_id=$(if $(RUN_ID),$(RUN_ID),$$($(PY) -m playlistai.latest_model --data-dir $(DATA_DIR) --run-id)) && \
	  $(MLFLOW_RUN) -e register -P run_id=$$run_id -P data_dir=$(DATA_DIR) -P promote=$(PROMOTE)

export: register

# `make promote VERSION=N`: gate an existing version again; `make rollback VERSION=N`: move production to N
promote: $(STAMP)
	$(MLFLOW_RUN) -e register -P version=$(VERSION) -P data_dir=$(DATA_DIR) -P promote=$(PROMOTE)

rollback: $(STAMP)
	$(MLFLOW_RUN) -e register -P version=$(VERSION) -P data_dir=$(DATA_DIR) -P promote=force

# -- deploy: the whole stack with Docker Compose (deploy/docker-compose.yml; see the README).
# `make up` builds the images, starts every long-running service and waits until all are healthy,
# then starts the one-shot trainer (the full pipeline against the MLflow server). `make logs
# SERVICE=trainer` follows one service; `make down VOLUMES=1` also deletes the stack's volumes.
COMPOSE ?= docker compose -f deploy/docker-compose.yml
STACK_SERVICES := postgres mlflow redis api pushgateway prometheus grafana
SERVICE ?=
VOLUMES ?=
# host ports of the stack (the Compose file has the same defaults): clear of a local Redis (6379),
# `mlflow ui` (5000), `make demo` (8088) and a local Prometheus and Pushgateway (9090, 9091)
PLAYLISTAI_API_PORT ?= 18088
PLAYLISTAI_MLFLOW_PORT ?= 15000
PLAYLISTAI_REDIS_PORT ?= 16379
PLAYLISTAI_PROMETHEUS_PORT ?= 19090
PLAYLISTAI_PUSHGATEWAY_PORT ?= 19091
PLAYLISTAI_GRAFANA_PORT ?= 13000
export PLAYLISTAI_API_PORT PLAYLISTAI_MLFLOW_PORT PLAYLISTAI_REDIS_PORT PLAYLISTAI_PROMETHEUS_PORT \
  PLAYLISTAI_PUSHGATEWAY_PORT PLAYLISTAI_GRAFANA_PORT
.PHONY: up down logs

up:
	$(COMPOSE) up -d --build --wait $(STACK_SERVICES)
	$(COMPOSE) up -d trainer
	@echo "API http://localhost:$(PLAYLISTAI_API_PORT)  MLflow http://localhost:$(PLAYLISTAI_MLFLOW_PORT)  Prometheus http://localhost:$(PLAYLISTAI_PROMETHEUS_PORT)  Pushgateway http://localhost:$(PLAYLISTAI_PUSHGATEWAY_PORT)  Grafana http://localhost:$(PLAYLISTAI_GRAFANA_PORT) (admin/admin)"
	@echo "training runs now: make logs SERVICE=trainer"

down:
	$(COMPOSE) down --remove-orphans $(if $(VOLUMES),--volumes)

logs:
	$(COMPOSE) logs -f --tail=200 $(SERVICE)

# -- training: `make train MODEL=gru4rec TRAIN_ARGS="-P epochs=5 -P trainer=local"` (README "Training").
# bench-train: events/s and peak RSS per Ray worker, old code (BENCH_OLD_REF) vs new, on `default`,
# DIGINETICA (`make realdata-prepare` first) and `large` (BENCHMARKS.md). bench-loss: the loss alone.
# bench-precision: fp32 against bf16 autocast on one SASRec step at DIGINETICA's scale.
MODEL ?= sasrec
TRAIN_ARGS ?=
BENCH_TRAIN_DATASETS ?= default,diginetica,large
BENCH_OLD_REF ?= 8dd00d0
.PHONY: train bench-train bench-loss bench-precision

train: $(STAMP)
	$(MLFLOW_RUN) -e train -P model=$(MODEL) -P data_dir=$(DATA_DIR) $(TRAIN_ARGS)

bench-train: $(STAMP)
	$(PY) bench/bench_train.py --datasets $(BENCH_TRAIN_DATASETS) --old-ref $(BENCH_OLD_REF) \
	  --data-root $(BENCH_DATA_ROOT) --diginetica-dir $(REALDATA_DIR)

bench-loss: $(STAMP)
	$(PY) bench/bench_loss.py

bench-precision: $(STAMP)
	$(PY) bench/bench_precision.py

# -- real data: DIGINETICA (README "Real data: DIGINETICA"). `make realdata-prepare`: data -> preprocess ->
# splits under the published protocol: a temporal split whose test part is the 15,963 published test
# sessions (15963 / 202633 of all sessions), every track of the file indexed, vocabulary from training and
# validation. `make realdata`: that, then both models trained (TRAIN_ARGS goes to both) and evaluated with
# the baselines on the test split, repeats allowed as in the papers. `make realdata-eval` evaluates again
# the latest finished training of each model on these splits (playlistai/latest_model.py finds them).
DATA ?= ../shared/data/diginetica/events.csv.gz
REALDATA_DIR ?= data/diginetica
REALDATA_TEST_FRAC := 0.078777
# the file's times are made up (each session its own user, 60 s between events, sessions end to end):
# they run from 2014-05-13 to 2041-09-19, past the data stage's default latest time (now + 1 day)
REALDATA_TIME_MAX := 2042-01-01
# each model trains on the product defaults, within this budget (minutes)
REALDATA_MINUTES ?= 30
.PHONY: realdata-prepare realdata realdata-eval

realdata-prepare: $(STAMP)
	$(MLFLOW_RUN) -e data -P source=$(DATA) -P data_dir=$(REALDATA_DIR) -P time_max=$(REALDATA_TIME_MAX)
	$(MLFLOW_RUN) -e preprocess -P data_dir=$(REALDATA_DIR)
	$(MLFLOW_RUN) -e splits -P data_dir=$(REALDATA_DIR) -P strategy=temporal -P test_frac=$(REALDATA_TEST_FRAC) \
	  -P val_frac=0.1 -P vocab_min_freq=1 -P vocab_scope=train_val

realdata: realdata-prepare
	$(MLFLOW_RUN) -e train -P model=sasrec -P data_dir=$(REALDATA_DIR) -P max_minutes=$(REALDATA_MINUTES) -P val_exclude_seen=false $(TRAIN_ARGS)
	$(MLFLOW_RUN) -e train -P model=gru4rec -P data_dir=$(REALDATA_DIR) -P max_minutes=$(REALDATA_MINUTES) -P val_exclude_seen=false $(TRAIN_ARGS)
	$(MAKE) realdata-eval

# the lookup runs first and stops the recipe when a model is missing, so no evaluation runs without it
realdata-eval: $(STAMP)
	uris=$$($(PY) -m playlistai.latest_model --data-dir $(REALDATA_DIR) sasrec gru4rec) && \
	  $(MLFLOW_RUN) -e evaluate -P data_dir=$(REALDATA_DIR) -P split=test -P exclude_seen=false -P baselines=true \
	  -P model_uri=$$uris

# -- serving: `make api` serves models:/playlistai@production on API_PORT (README "Serving").
# bench-serve: latency and throughput of POST /continue under wrk, 1 worker and one per core (BENCHMARKS.md);
# trained models: BENCH_SERVE_ARGS="--checkpoints large=runs:/<train run>/checkpoint"
API_PORT ?= 8088
API_HOST ?= 127.0.0.1
BENCH_SERVE_SIZES ?= default
BENCH_SERVE_ARGS ?=
BENCH_EXACT_ARGS ?=
.PHONY: api bench-serve bench-ann bench-exact

# gunicorn with the edge's uvicorn workers, one per core unless WEB_CONCURRENCY says otherwise
# (`python -m serving` is one process). /metrics sums the workers through PROMETHEUS_MULTIPROC_DIR:
# a fresh temporary folder, removed when the server stops, unless the environment names one. The
# shell traps INT and TERM so that it waits for gunicorn's graceful stop before it removes the folder.
api: $(STAMP)
	@metrics_dir="$${PROMETHEUS_MULTIPROC_DIR:-}"; \
	if [ -z "$$metrics_dir" ]; then \
	  metrics_dir=$$(mktemp -d -t playlistai-metrics.XXXXXX) && trap 'rm -rf "$$metrics_dir"' EXIT; \
	fi; \
	trap : INT TERM; \
	PROMETHEUS_MULTIPROC_DIR="$$metrics_dir" API_HOST=$(API_HOST) API_PORT=$(API_PORT) \
	  $(VENV)/bin/gunicorn serving.main:app -c serving/gunicorn_conf.py

# ANN against exact on a trained model, in-process (BENCHMARKS.md "ANN on a trained model"):
# make bench-ann CHECKPOINT=runs:/<train run>/checkpoint DATA_DIR=data/diginetica
CHECKPOINT ?=
BENCH_ANN_ARGS ?=
bench-ann: $(STAMP)
	@test -n "$(CHECKPOINT)" || (echo "bench-ann: give CHECKPOINT=runs:/<train run>/checkpoint (or a folder)" >&2; exit 2)
	$(TRACKING_ENV) \
	  $(PY) bench/bench_ann.py --checkpoint $(CHECKPOINT) --data-dir $(DATA_DIR) $(BENCH_ANN_ARGS)

bench-serve: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(PY) bench/bench_serve.py --sizes $(BENCH_SERVE_SIZES) --data-root $(BENCH_DATA_ROOT) $(BENCH_SERVE_ARGS)

# exact scoring with the item table in float32 vs bfloat16 (ITEM_TABLE_DTYPE), in-process, on random
# tables of 6k, 140k and 1M tracks x 64 and 256 dims (BENCHMARKS.md, "Exact scoring in bfloat16")
bench-exact: $(STAMP)
	$(PY) bench/bench_exact.py $(BENCH_EXACT_ARGS)

# -- monitoring (README "Monitoring"): `make drift` tests the API's latest requests against the
# production model's training features, prints the PSI table, logs to MLflow, pushes to the
# Pushgateway (a warning, not a failure, when there is none) and shows what Prometheus scrapes. `make drift REPLAY=hour` (none | hour | popularity) first replays
# DRIFT_REQUESTS training-like requests with that shift against the local API on API_PORT.
REPLAY ?=
DRIFT_REQUESTS ?= 1000
DRIFT_ARGS ?=
PUSHGATEWAY_URL ?= http://127.0.0.1:9091
.PHONY: drift monitoring-check

drift: $(STAMP)
	$(if $(REPLAY),$(PY) -m monitoring.replay --api-url http://127.0.0.1:$(API_PORT) --data-dir $(DATA_DIR) \
	  --requests $(DRIFT_REQUESTS) --shift $(REPLAY))
	$(MLFLOW_RUN) -e drift -P pushgateway_url=$(PUSHGATEWAY_URL) $(if $(REPLAY),-P window=$(DRIFT_REQUESTS)) $(DRIFT_ARGS)
	@for src in "Pushgateway $(PUSHGATEWAY_URL)" "API http://127.0.0.1:$(API_PORT)"; do \
	  url=$${src#* }; metrics=$$(curl -sf --max-time 5 $$url/metrics) || continue; \
	  echo "-- $$src/metrics"; grep -E '^drift_(psi|detected)' <<< "$$metrics" || true; done

# promtool (Debian package `prometheus`) validates the scrape config and the alert rules
monitoring-check:
	promtool check config monitoring/prometheus/prometheus.yml
	promtool check rules monitoring/prometheus/alerts.yml

# -- docs: `make ui-screenshots` photographs the MLflow UI of the tracking store after `make demo` (the
# experiment's runs, the two training runs compared, the registered model's versions) into
# UI_SCREENSHOTS_OUT, in headless Chromium (Debian's, with its driver); README "Registry".
# UI_SCREENSHOTS_ARGS="--timeout 180" gives a slow machine more time per page
UI_SCREENSHOTS_OUT ?= docs
UI_SCREENSHOTS_ARGS ?=
.PHONY: ui-screenshots

ui-screenshots: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	$(PY) docs/ui_screenshots.py --out $(UI_SCREENSHOTS_OUT) $(UI_SCREENSHOTS_ARGS)

# -- reliability (RELIABILITY.md): load, faults and bad input against real local components (the API
# under gunicorn, Redis, MLflow store and server, PostgreSQL, the entry points). Ends with
# `N passed, N failed`, a table of figures, and rewrites RELIABILITY.md's results. About 20 minutes.
# `make reliability RELIABILITY_ARGS="--only redis_faults,model_rollout"` runs some; `--profile short` is the CI size.
RELIABILITY_ARGS ?=
.PHONY: reliability

reliability: $(STAMP)
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(PY) -m reliability --profile full $(RELIABILITY_ARGS)
