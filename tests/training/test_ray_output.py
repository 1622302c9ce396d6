"""What a user reads from a Ray training: the epoch lines and the stage's summary, not Ray's internals.

Run as a user runs it (the `train` entry point in a fresh process, which starts its own local Ray),
with another Ray instance running on the machine, as on a shared or busy one: that is what turned
Ray Train's PlacementGroupCleaner into a `Found multiple active Ray instances` traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOISE = (
    "PlacementGroupCleaner", "Failed to query Ray Train Controller", "Found multiple active Ray instances",
    "TrainingReport(", "Reporting training result", "GetTimeoutError", "Traceback", "core_worker.cc",
    "Token authentication is enabled", "swigfaiss", "Add type hints to the `predict` method", "\x1b[",
)
OTHER_RAY = """
import time, ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
print("ready", flush=True)
try:
    time.sleep(900)
except KeyboardInterrupt:
    ray.shutdown()
"""


@pytest.fixture
def another_ray(tmp_path):
    """A second local Ray instance for the length of the test (stopped by SIGINT: only its own)."""
    log = tmp_path / "other-ray.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", OTHER_RAY], stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=tmp_path)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        pytest.fail(f"the other Ray instance did not start: {log.read_text()[-3000:]}")
    yield
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_a_ray_training_prints_epochs_and_a_summary_and_no_ray_internals(another_ray, tiny_data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "RAY_ADDRESS")}
    cmd = [sys.executable, "-m", "entrypoints.train", "--trainer", "ray", "--num-workers", "2", "--epochs", "2",
           "--d-model", "16", "--n-layers", "1", "--max-seq-len", "20", "--batch-size", "128", "--patience", "0",
           "--val-max-cases", "200", "--data-dir", str(tiny_data_dir), "--storage-path", str(tmp_path / "train")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    found = [marker for marker in NOISE if marker in out]
    assert not found, f"{found} in:\n{out[-6000:]}"
    assert sum(f"epoch {n}: train_loss" in out for n in (1, 2)) == 2, out[-3000:]
    last = proc.stdout.strip().splitlines()[-2:]
    assert last[0].startswith("train: sasrec best epoch ") and "checkpoint runs:/" in last[0], last
    assert last[1].startswith("next: `make register RUN_ID="), last
