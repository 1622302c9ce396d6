"""gunicorn settings for production: uvicorn workers, WEB_CONCURRENCY of them, metrics summed over
workers through PROMETHEUS_MULTIPROC_DIR.

    PROMETHEUS_MULTIPROC_DIR=/tmp/playlistai-metrics gunicorn serving.main:app -c serving/gunicorn_conf.py
"""

import os
import shutil
from pathlib import Path

from playlistai.config import get_settings

_settings = get_settings()

bind = os.environ.get("BIND", f"{_settings.API_HOST}:{_settings.API_PORT}")
workers = _settings.WEB_CONCURRENCY
worker_class = "uvicorn.workers.UvicornWorker"
timeout = 60             # a model load runs in a thread, so the worker keeps answering heartbeats
graceful_timeout = 20
keepalive = 5
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
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
