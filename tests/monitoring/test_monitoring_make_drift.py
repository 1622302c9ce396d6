"""`make drift` as a user types it, on a machine without a Pushgateway: the job still tests the API's
traffic, prints its PSI table, warns that nothing was pushed, and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from monitoring.replay import make_requests
from playlistai.data.sequences import load_split
from reliability.components import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
TESTED = ("history_len", "hour", "dow", "unknown_share", "mean_pop_pct")
STREAM_KEY = "playlistai:traffic:v1"


def write_traffic(redis_url: str, package: Path, data_dir: Path, n: int) -> None:
    """What the API writes to its stream for `n` training-like requests (serving/traffic.py)."""
    import redis

    from playlistai.inference import Recommender
    from serving.traffic import feature_row

    recommender = Recommender.from_directory(package)
    rows = [feature_row(recommender, r.tracks, r.hour, r.dow, None)
            for r in make_requests(load_split(data_dir, "train"), n, "none", 11)]
    client = redis.Redis.from_url(redis_url)
    for row in pd.DataFrame(rows).to_dict("records"):
        client.xadd(STREAM_KEY, {k: str(v) for k, v in row.items() if v is not None})
    client.close()


def test_make_drift_without_a_pushgateway_prints_the_table_warns_and_exits_0(monitoring_model, redis_url, tmp_path):
    write_traffic(redis_url, monitoring_model["package"], monitoring_model["data_dir"], 300)
    closed = free_port()   # nothing listens there: no Pushgateway, no API
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    env.update(MLFLOW_TRACKING_URI=monitoring_model["tracking_uri"], REGISTERED_MODEL_NAME=monitoring_model["name"],
               MODEL_ALIAS="production", REDIS_URL=redis_url, TRAFFIC_STREAM_KEY=STREAM_KEY,
               DRIFT_STATE_FILE=str(tmp_path / "drift.json"), PUSHGATEWAY_URL=f"http://127.0.0.1:{closed}",
               API_PORT=str(closed))
    proc = subprocess.run(["make", "drift", f"VENV={VENV}", "-o", f"{VENV}/.installed"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Traceback" not in out and "Error 2" not in out

    lines = proc.stdout.splitlines()
    verdict = next(line for line in lines if line.startswith("drift: ") and "live requests" in line)
    counts = re.search(r"\(([\d,]+) live requests vs ([\d,]+) training cases", verdict)
    assert counts and 250 <= int(counts.group(1).replace(",", "")) <= 300, verdict   # rows with a gap are dropped
    assert "," in counts.group(2), "thousands separators"
    assert "drift: drift:" not in out and "drift: ok:" not in out
    header = lines.index(next(line for line in lines if line.split() == ["feature", "PSI", "p-value", "threshold"]))
    table = {line.split()[0]: line.split()[1:] for line in lines[header + 1: header + 1 + len(TESTED)]}
    assert set(table) == set(TESTED), lines
    assert all(float(row[0]) >= 0 for row in table.values())

    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: drift: not pushed")]
    assert len(warnings) == 1 and f"127.0.0.1:{closed}" in warnings[0], proc.stderr[-3000:]
    last = [line for line in lines if line.startswith("drift: ")][-1]
    assert last.startswith(("drift: ok; run ", "drift: drift; run ")), last
    assert lines[lines.index(last) + 1].startswith("next: `curl -s 127.0.0.1:"), lines

    client = mlflow.MlflowClient(monitoring_model["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("playlistai").experiment_id],
                                "tags.stage = 'drift' and tags.drift_push = 'failed'")
    assert run.info.status == "FINISHED" and "drift_psi_hour" in run.data.metrics
