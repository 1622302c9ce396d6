"""Each app keeps its own service state (serving/state.py): two apps in one process share no drift
state and no traffic buffer."""

from __future__ import annotations

import json


def test_each_app_reports_its_own_drift_state_and_records_its_own_traffic(make_client, tmp_path):
    drifted = tmp_path / "drifted.json"
    drifted.write_text(json.dumps({"status": "ok", "psi": {"hour": 0.5}, "drift_detected": True, "n_current": 900}))
    first = make_client(DRIFT_STATE_FILE=str(drifted))
    second = make_client(DRIFT_STATE_FILE=str(tmp_path / "never-written.json"))

    assert 'drift_psi{feature="hour"} 0.5' in first.get("/metrics").text
    assert "drift_psi{" not in second.get("/metrics").text

    assert first.post("/continue", json={"tracks": ["t1", "t2"], "k": 5}).status_code == 200
    assert len(first.app.state.service.traffic.buffer) == 1
    assert not second.app.state.service.traffic.buffer

