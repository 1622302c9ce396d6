"""gunicorn settings for production: uvicorn workers, WEB_CONCURRENCY of them, metrics summed over
workers through PROMETHEUS_MULTIPROC_DIR.

    PROMETHEUS_MULTIPROC_DIR=/tmp/playlistai-metrics gunicorn serving.main:app -c serving/gunicorn_conf.py
"""

import math
import os
import shutil
from pathlib import Path

# imported here, once, by the master as it reads this file: `child_exit` runs in its SIGCHLD handler,
# and an import there can be interrupted by the next worker's exit, which then finds the module half
# initialised (ImportError: the master died with status 1 on SIGTERM under load)
from prometheus_client import multiprocess

from playlistai.config import get_settings

_settings = get_settings()

bind = os.environ.get("BIND", f"{_settings.API_HOST}:{_settings.API_PORT}")
workers = _settings.WEB_CONCURRENCY
# uvicorn's worker with the edge's limits, timeouts and graceful SIGTERM (serving/edge.py). gunicorn's
# limit_request_line / limit_request_fields / limit_request_field_size are not set here: they apply to
# its sync workers' parser only, never to uvicorn workers.
worker_class = "serving.edge.EdgeWorker"
timeout = 60             # a model load runs in a thread, so the worker keeps answering heartbeats
# SIGTERM: each worker drains (SHUTDOWN_DRAIN_S), then its accepted requests have SHUTDOWN_GRACE_S;
# the master kills a worker still running after graceful_timeout
# (gunicorn takes whole seconds; the worker applies KEEPALIVE_TIMEOUT_S as given)
graceful_timeout = math.ceil(_settings.SHUTDOWN_DRAIN_S + _settings.SHUTDOWN_GRACE_S + 5)
keepalive = max(1, math.ceil(_settings.KEEPALIVE_TIMEOUT_S))
accesslog = None         # request counts and latency are in /metrics
loglevel = os.environ.get("LOG_LEVEL", "info")


def on_starting(server):
    """Start every deployment with an empty metrics folder (old workers' files would be summed)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        Path(directory).mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
