"""The API's metrics: names the dashboards and alerts rely on, scrape-time gauges, traffic rows,
several workers, and promtool on the Prometheus config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "monitoring" / "prometheus"
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "playlistai.json"

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "le", "inf"}
PROMETHEUS_OWN = {"up", "time"}        # series Prometheus makes itself


def exported_sample_names(families) -> set[str]:
    names = set()
    for family in families:
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def promql_metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)                       # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                      # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        word = match.group(0)
        if rest.startswith("(") or word in PROMQL_WORDS or word.startswith("__"):
            continue                                            # a function, keyword or Grafana macro
        names.add(word)
    return names


def used_metric_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used[f"alert {rule['alert']}"] = promql_metric_names(rule["expr"])
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            used[f"panel {panel['title']!r}"] = promql_metric_names(target["expr"])
    return used


def test_every_metric_in_the_dashboard_and_alert_rules_is_exported():
    from prometheus_client import REGISTRY

    from monitoring.drift import DriftResult
    from monitoring.drift_job import drift_state, push_registry
    from serving.metrics import ScrapeTimeMetrics

    api = exported_sample_names(ScrapeTimeMetrics(REGISTRY).collect())
    state = drift_state(DriftResult("ok", 1, 1, psi={"hour": 0.1}, p_values={"hour": 0.5},
                                    thresholds={"hour": 0.002}, features=["hour"]), "1", 0.0)
    job = exported_sample_names(push_registry(state).collect())
    assert {"drift_psi", "drift_ks_p", "drift_detected", "drift_last_success_timestamp_seconds"} <= job & api
    assert {"request_duration_ms_bucket", "model_forward_ms_bucket", "ann_ms_bucket", "cache_hit_ratio",
            "cache_hits_total", "cache_misses_total", "errors_total", "requests_total", "unknown_tracks_total",
            "fallback_total", "model_info"} <= api
    used = used_metric_names()
    assert len(used) > 15
    for where, names in used.items():
        unknown = names - api - job - PROMETHEUS_OWN
        assert not unknown, f"{where} uses {sorted(unknown)}, which neither the API nor the drift job exports"


def test_promtool_accepts_the_config_and_the_rules(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisioning_points_at_the_dashboard_folder():
    grafana = REPO / "monitoring" / "grafana"
    datasource = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "playlistai.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = (REPO / "deploy" / "docker-compose.yml").read_text()
    assert "../monitoring/grafana/dashboards:/var/lib/grafana/dashboards" in compose


def sample_value(text: str, sample: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_cache_hit_ratio_covers_the_latest_lookups_only():
    from serving.metrics import CacheHitWindow, render_latest

    window = CacheHitWindow(4)
    for hit in (False, False, False, False, True, True, True):
        window.observe(hit)
    text = render_latest().decode()
    assert sample_value(text, "cache_hit_ratio") == pytest.approx(0.75)     # 3 of the latest 4
    assert "cache_window_hits" not in text                                   # summed into the ratio


def test_feature_rows_go_to_a_capped_stream_and_wait_in_memory_while_redis_is_down(redis_url):
    from serving.traffic import TrafficRecorder

    recorder = TrafficRecorder(redis_url, "test:traffic", stream_maxlen=100, buffer_rows=1000)
    for i in range(600):
        recorder.record({"history_len": 3, "hour": i % 24, "dow": 2, "unknown_share": 0.0})
    assert recorder.flush() == 600 and not recorder.buffer
    client = redis.Redis.from_url(redis_url)
    length = client.xlen("test:traffic")
    assert 100 <= length < 600                                 # MAXLEN ~: trimmed in whole nodes
    newest = client.xrevrange("test:traffic", count=1)[0][1]
    assert set(newest) == {b"history_len", b"hour", b"dow", b"unknown_share"}   # nothing else is kept

    down = TrafficRecorder("redis://127.0.0.1:1/0", "test:traffic", stream_maxlen=100, buffer_rows=50)
    for i in range(80):
        down.record({"history_len": i, "hour": 1, "dow": 1})
    assert down.flush() == 0
    assert [row["history_len"] for row in down.buffer] == list(range(30, 80))     # the latest 50


WORKER = textwrap.dedent("""
    import sys
    from serving.metrics import CACHE_WINDOW, REQUESTS_TOTAL
    n, hits = int(sys.argv[1]), int(sys.argv[2])
    for i in range(n):
        REQUESTS_TOTAL.labels("/continue", "POST", "200").inc()
        CACHE_WINDOW.observe(i < hits)
""")
SCRAPE = "from serving.metrics import render_latest; print(render_latest().decode())"


def test_two_workers_counts_and_cache_windows_add_up(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    for n, hits in ((30, 30), (10, 0)):        # two worker processes, each with its own counters
        subprocess.run([sys.executable, "-c", WORKER, str(n), str(hits)], env=env, cwd=REPO, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", SCRAPE], env=env, cwd=REPO, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    assert sample_value(text, 'requests_total{method="POST",route="/continue",status="200"}') == 40
    assert sample_value(text, "cache_hit_ratio") == pytest.approx(30 / 40)
