"""The production command, run once: gunicorn with two uvicorn workers, metrics summed over both."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from reliability.components import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 40


def counter_value(metrics_text: str, sample: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gunicorn_serves_with_two_workers_and_sums_their_metrics(tiny_registry, tmp_path):
    gunicorn = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "gunicorn"
    if not gunicorn.exists():
        gunicorn = REPO / ".venv" / "bin" / "gunicorn"
    port = free_port()
    env = {
        **os.environ,
        "MODEL_URI": str(tiny_registry["packages"]["1"]),
        "API_PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "REDIS_URL": "",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen([str(gunicorn), "serving.main:app", "-c", "serving/gunicorn_conf.py"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
            try:
                health = httpx.get(f"{base}/healthz", timeout=2).json()
                if health["model_loaded"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert health and health["model_loaded"], (tmp_path / "gunicorn.log").read_text()[-3000:]

        for i in range(REQUESTS):
            # a new connection each time, so that both workers take some
            response = httpx.post(f"{base}/continue", json={"tracks": ["t000001", "t000002"], "k": 5,
                                                            "context": {"hour": i % 24, "dow": 3}}, timeout=10)
            assert response.status_code == 200, response.text
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        served = counter_value(metrics, 'requests_total{method="POST",route="/continue",status="200"}')
        assert served == REQUESTS, metrics[:2000]
        # each worker has its own in-process cache (no Redis here): hits and misses add up to all requests
        misses = counter_value(metrics, 'cache_misses_total{backend="local"}')
        hits = counter_value(metrics, 'cache_hits_total{backend="local"}')
        assert misses >= 24 and misses + hits == REQUESTS
        assert len(list((tmp_path / "metrics").glob("counter_*.db"))) >= 2   # both workers wrote
    finally:
        server.send_signal(15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
