"""Fixtures of the monitoring tests: free ports, throw-away servers (Redis, Pushgateway, Prometheus,
the API under uvicorn) on 127.0.0.1, a tiny registered model with its drift reference, and the whole
monitoring stack on it (`monitoring_stack`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from reliability.components import free_port, port_open

REPO = Path(__file__).resolve().parents[2]

MONITORING_MODEL = "monitoring-tiny"
SCRAPE_INTERVAL_S = 1


def wait_until(check, timeout_s: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `check()` until it returns something truthy; fail with the process's log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited ({process.returncode}): {log.read_text()[-3000:] if log else ''}")
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout_s} s: {log.read_text()[-3000:] if log else ''}")


class Server:
    """A subprocess with its log in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], log: Path, **popen) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT, **popen)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log_file.close()


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it)")
    return path


@pytest.fixture
def start_server(tmp_path):
    """start_server(name, args, ready=callable, timeout_s=...) -> Server, stopped at teardown."""
    servers: list[Server] = []

    def start(name: str, args: list[str], ready, timeout_s: float = 30, **popen) -> Server:
        server = Server(args, tmp_path / f"{name}.log", **popen)
        servers.append(server)
        wait_until(ready, timeout_s, f"{name} did not start", server.process, server.log)
        return server

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def redis_url(start_server):
    binary = require_binary("redis-server")
    port = free_port()
    start_server("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                 ready=lambda: port_open(port), timeout_s=10)
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def monitoring_model(tiny_data_dir, tmp_path_factory):
    """A tiny untrained SASRec package, registered as `monitoring-tiny` with the alias `production`."""
    import mlflow
    import torch

    from playlistai.data.sequences import load_vocab
    from playlistai.models import ModelConfig, build_model
    from playlistai.models.checkpoint import save_checkpoint
    from playlistai.registry.packaging import build_package
    from playlistai.registry.pyfunc import log_package_model
    from playlistai.tracking import configure_mlflow

    root = tmp_path_factory.mktemp("monitoring_model")
    torch.manual_seed(0)
    vocab = load_vocab(tiny_data_dir)
    model = build_model(ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=32, n_layers=1, max_seq_len=20))
    package = root / "package"
    build_package(save_checkpoint(root / "checkpoint", model, vocab), tiny_data_dir, package)
    configure_mlflow()
    with mlflow.start_run(run_name="monitoring-tiny"):
        info = log_package_model(package)
    version = mlflow.register_model(info.model_uri, MONITORING_MODEL).version
    mlflow.MlflowClient().set_registered_model_alias(MONITORING_MODEL, "production", version)
    return {"name": MONITORING_MODEL, "uri": f"models:/{MONITORING_MODEL}@production", "version": str(version),
            "package": package, "data_dir": tiny_data_dir, "tracking_uri": mlflow.get_tracking_uri()}


# -- the monitoring stack: the API and the Pushgateway, scraped by Prometheus ---------------------

def prometheus_config(tmp_path: Path, api_port: int, pushgateway_port: int) -> Path:
    """The repo's prometheus.yml and alert rules, pointed at the test ports, scraping every
    SCRAPE_INTERVAL_S."""
    config = yaml.safe_load((REPO / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    interval = f"{SCRAPE_INTERVAL_S}s"
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    targets = {"playlistai-api": f"127.0.0.1:{api_port}", "pushgateway": f"127.0.0.1:{pushgateway_port}"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    shutil.copy(REPO / "monitoring" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def prometheus_api(prometheus: str, endpoint: str, **params) -> dict:
    body = httpx.get(f"{prometheus}/api/v1/{endpoint}", params=params, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]


def instant(prometheus: str, promql: str, at: float | None = None) -> list[dict]:
    """An instant query's result, now or at `at` (seconds since the epoch)."""
    params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
    return prometheus_api(prometheus, "query", **params)["result"]


@dataclass(frozen=True)
class MonitoringStack:
    api: str            # base URLs
    pushgateway: str
    prometheus: str
    state_file: Path    # the API's DRIFT_STATE_FILE: where a drift job run stores its result for /metrics


@pytest.fixture
def monitoring_stack(monitoring_model, redis_url, start_server, tmp_path) -> MonitoringStack:
    """A Pushgateway, the API under uvicorn serving `monitoring_model` with `redis_url`, and
    Prometheus with the repo's config scraping both; ready once Prometheus sees both targets up."""
    prometheus_bin = require_binary("prometheus")
    pushgateway_bin = require_binary("prometheus-pushgateway")
    api_port, pushgateway_port, prometheus_port = free_port(), free_port(), free_port()
    stack = MonitoringStack(api=f"http://127.0.0.1:{api_port}", pushgateway=f"http://127.0.0.1:{pushgateway_port}",
                            prometheus=f"http://127.0.0.1:{prometheus_port}", state_file=tmp_path / "drift_state.json")

    # in memory only: Debian's binary persists to /var/lib/prometheus/pushgateway.data by default, so a
    # Pushgateway would start with the drift gauges an earlier test pushed
    start_server("pushgateway", [pushgateway_bin, f"--web.listen-address=127.0.0.1:{pushgateway_port}",
                                 "--persistence.file="],
                 ready=lambda: port_open(pushgateway_port))
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url, "REGISTERED_MODEL_NAME": monitoring_model["name"],
           "MODEL_ALIAS": "production", "MLFLOW_TRACKING_URI": monitoring_model["tracking_uri"],
           "DRIFT_STATE_FILE": str(stack.state_file), "MODEL_POLL_S": "3600", "TORCH_THREADS": "1",
           "REDIS_TIMEOUT_MS": "2000"}        # repeated requests hit the cache on a busy CPU too
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    start_server("api", [sys.executable, "-m", "uvicorn", "serving.main:app", "--host", "127.0.0.1", "--port",
                         str(api_port), "--no-access-log", "--log-level", "warning"],
                 ready=lambda: httpx.get(f"{stack.api}/healthz", timeout=2).json()["model_loaded"], timeout_s=90,
                 cwd=REPO, env=env)
    config = prometheus_config(tmp_path, api_port, pushgateway_port)
    start_server("prometheus", [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                 ready=lambda: httpx.get(f"{stack.prometheus}/-/ready", timeout=2).status_code == 200, timeout_s=60)
    wait_until(lambda: len(instant(stack.prometheus, "up == 1")) == 2, 30, "Prometheus did not scrape both targets")
    return stack
