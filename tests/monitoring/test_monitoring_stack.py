"""Real components end to end: Redis, the API (uvicorn) on a registered tiny model, the Pushgateway,
Prometheus with the repo's config (targets and intervals adapted), the replay and the drift job.
Prometheus must end up with request_duration_ms samples from the API and drift_psi for every
feature, both as pushed by the job and as reported by the API's /metrics."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from monitoring.drift_job import PUSH_JOB, DriftJobConfig, run_drift_job
from monitoring.replay import replay_from_data_dir
from playlistai.tracking import stage_run
from tests.monitoring.conftest import free_port, port_open, require_binary, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TESTED = {"history_len", "hour", "dow", "unknown_share", "mean_pop_pct"}   # top_score has no training reference


def prometheus_config(tmp_path: Path, api_port: int, pushgateway_port: int) -> Path:
    """The repo's prometheus.yml and alert rules, pointed at the test ports, scraping every second."""
    config = yaml.safe_load((REPO / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    targets = {"playlistai-api": f"127.0.0.1:{api_port}", "pushgateway": f"127.0.0.1:{pushgateway_port}"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    shutil.copy(REPO / "monitoring" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(prometheus: str, promql: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_api_and_the_drift_job(monitoring_model, redis_url, start_server, tmp_path):
    prometheus_bin = require_binary("prometheus")
    pushgateway_bin = require_binary("prometheus-pushgateway")
    api_port, pushgateway_port, prometheus_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    pushgateway = f"http://127.0.0.1:{pushgateway_port}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    state_file = tmp_path / "drift_state.json"

    start_server("pushgateway", [pushgateway_bin, f"--web.listen-address=127.0.0.1:{pushgateway_port}"],
                 ready=lambda: port_open(pushgateway_port))
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url, "REGISTERED_MODEL_NAME": monitoring_model["name"],
           "MODEL_ALIAS": "production", "MLFLOW_TRACKING_URI": monitoring_model["tracking_uri"],
           "DRIFT_STATE_FILE": str(state_file), "MODEL_POLL_S": "3600", "TORCH_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    start_server("api", [sys.executable, "-m", "uvicorn", "serving.main:app", "--host", "127.0.0.1", "--port",
                         str(api_port), "--no-access-log", "--log-level", "warning"],
                 ready=lambda: httpx.get(f"{api}/healthz", timeout=2).json()["model_loaded"], timeout_s=90,
                 cwd=REPO, env=env)
    config = prometheus_config(tmp_path, api_port, pushgateway_port)
    start_server("prometheus", [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                 ready=lambda: httpx.get(f"{prometheus}/-/ready", timeout=2).status_code == 200, timeout_s=60)

    outcome = replay_from_data_dir(api, monitoring_model["data_dir"], 400, "hour", seed=5)
    assert outcome["statuses"] == {200: 400}, outcome
    job = DriftJobConfig(model_uri=monitoring_model["uri"], window=400, redis_url=redis_url,
                         state_file=str(state_file), pushgateway_url=pushgateway)
    with stage_run("drift", {"window": 400}):
        state = run_drift_job(job)
    assert state["status"] == "drift" and state["n_current"] >= 200 and state["psi"]["hour"] > 0.25, state

    api_metrics = httpx.get(f"{api}/metrics", timeout=5).text
    assert f'drift_psi{{feature="hour"}} {state["psi"]["hour"]}' in api_metrics

    def scraped():
        latency = query(prometheus, 'request_duration_ms_bucket{job="playlistai-api", route="/continue"}')
        pushed = {s["metric"]["feature"] for s in query(prometheus, f'drift_psi{{job="{PUSH_JOB}"}}')}
        reported = {s["metric"]["feature"] for s in query(prometheus, 'drift_psi{job="playlistai-api"}')}
        return latency and pushed == TESTED and reported == TESTED

    wait_until(scraped, 30, "Prometheus did not scrape the latency histogram and drift_psi of every feature")
    hour = query(prometheus, f'drift_psi{{job="{PUSH_JOB}", feature="hour"}}')
    assert float(hour[0]["value"][1]) == pytest.approx(state["psi"]["hour"])
    requests = query(prometheus, 'sum(requests_total{job="playlistai-api", route="/continue"})')
    assert float(requests[0]["value"][1]) >= 400
