"""Fixtures of the monitoring tests: free ports, throw-away servers (Redis, Pushgateway, Prometheus,
the API under uvicorn) on 127.0.0.1, and a tiny registered model with its drift reference."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from reliability.components import free_port, port_open

REPO = Path(__file__).resolve().parents[2]

MONITORING_MODEL = "monitoring-tiny"


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
