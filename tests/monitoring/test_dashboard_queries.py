"""Every panel query of the Grafana dashboards, run against a real Prometheus.

Grafana itself is not started: each `targets[].expr` of every dashboard JSON under monitoring/ and
deploy/ (panels nested in rows included) gets its variables substituted the way Grafana would
($__rate_interval -> 1m, template variables -> their current value, or `.*`) and is sent to a
Prometheus that scrapes the API on a tiny registered model and the Pushgateway the drift job pushes
to. The traffic comes in two batches a few scrapes apart and provokes what the panels show: exact
and ANN answers, cache misses and hits, unknown tracks, popularity fallbacks, 4xx answers (400 and
422, counted in errors_total), and one drift job run. Each query must then return at least one
series with a number, as an instant query at the end and as the range query a panel makes, and
every label its legend names."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from monitoring.drift_job import DriftJobConfig, run_drift_job
from monitoring.replay import make_requests
from playlistai.data.sequences import load_split
from playlistai.tracking import stage_run
from tests.monitoring.conftest import SCRAPE_INTERVAL_S, instant, prometheus_api, wait_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_FOLDERS = ("monitoring", "deploy")
DATASOURCES = REPO / "monitoring" / "grafana" / "provisioning" / "datasources"

# Grafana's global variables, with the values it gives them for this dashboard's 6 h range and the
# datasource's 15 s scrape interval: $__rate_interval = max($__interval + 15 s, 4 * 15 s) = 1 m.
GRAFANA_GLOBALS = {
    "__rate_interval": "1m", "__rate_interval_ms": "60000",
    "__interval": "15s", "__interval_ms": "15000",
    "__range": "5m", "__range_s": "300", "__range_ms": "300000",
}
ALL_VALUES = ".*"

# "dashboard file / panel title / refId": why the query is empty even after the traffic below.
# Empty: every panel query of the shipped dashboards is provoked.
EXCUSED: dict[str, str] = {}

VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


# -- the dashboards -------------------------------------------------------------------------------

def dashboard_files() -> list[Path]:
    """Every JSON file under monitoring/ and deploy/ that holds a Grafana dashboard."""
    found = []
    for folder in DASHBOARD_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.json")):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and ("panels" in data or "panels" in data.get("dashboard", {})):
                found.append(path)
    return found


def load_dashboard(path: Path) -> dict:
    data = json.loads(path.read_text())
    return data.get("dashboard", data)       # an export of the HTTP API wraps it


def panels_of(container: dict):
    """Panels at any depth: rows hold theirs in `panels` (schema >= 16) or in `rows[].panels` (older)."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels_of(panel)
    for row in container.get("rows", []):
        yield from panels_of(row)


def template_values(dashboard: dict) -> dict[str, str]:
    """What Grafana substitutes for each variable when the dashboard opens: the global macros, and
    each template variable's current value; All (or no value) gives its allValue, else `.*`, and
    several values give a regex alternation, as Grafana formats them for Prometheus."""
    values = dict(GRAFANA_GLOBALS)
    for variable in dashboard.get("templating", {}).get("list", []):
        current = (variable.get("current") or {}).get("value")
        if variable.get("type") == "constant":
            current = variable.get("query", current)
        chosen = current if isinstance(current, list) else [current]
        chosen = [str(v) for v in chosen if v not in (None, "")]
        if not chosen or "$__all" in chosen:
            value = variable.get("allValue") or ALL_VALUES
        elif chosen[0].startswith("$__auto"):
            value = GRAFANA_GLOBALS["__interval"]
        elif len(chosen) == 1:
            value = chosen[0]
        else:
            value = "(" + "|".join(re.escape(v) for v in chosen) + ")"
        values[variable["name"]] = value
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """`$name`, `${name}`, `${name:format}` and `[[name]]` replaced; an unknown variable fails."""
    def one(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"the variable ${name} is neither a Grafana global nor one of the dashboard's")
        return values[name]

    return VARIABLE.sub(one, expr)


def panel_queries() -> list[dict]:
    """Every (dashboard, panel, target) with a PromQL expression, variables substituted."""
    queries = []
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        values = template_values(dashboard)
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                if not target.get("expr", "").strip():
                    continue
                name = f"{path.relative_to(REPO)} / {panel.get('title', panel.get('id'))} / {target.get('refId', '?')}"
                queries.append({"name": name, "expr": target["expr"], "promql": substitute(target["expr"], values),
                                "legend": target.get("legendFormat", ""),
                                "datasource": target.get("datasource") or panel.get("datasource")})
    return queries


def test_the_dashboards_have_queries_and_use_the_provisioned_datasource():
    """The files the live test below goes through: found, with their variables all known, and read
    from the datasource that Grafana's provisioning creates."""
    assert dashboard_files(), "no Grafana dashboard JSON under monitoring/ or deploy/"
    queries = panel_queries()
    assert len(queries) >= 10, [q["name"] for q in queries]
    provisioned = {source["uid"] for path in sorted(DATASOURCES.glob("*.y*ml"))
                   for source in yaml.safe_load(path.read_text()).get("datasources", [])}
    for q in queries:
        source = q["datasource"]
        if isinstance(source, dict) and source.get("uid") and not source["uid"].startswith("$"):
            assert source["uid"] in provisioned, f"{q['name']}: datasource {source['uid']} is not provisioned"
    assert set(EXCUSED) <= {q["name"] for q in queries}, "an excused query is no longer on a dashboard"


def test_variables_are_substituted_as_grafana_does():
    dashboard = {"templating": {"list": [
        {"name": "job", "type": "query", "current": {"text": "playlistai-api", "value": "playlistai-api"}},
        {"name": "route", "type": "query", "current": {"text": "All", "value": ["$__all"]}},
        {"name": "feature", "type": "custom", "current": {"value": ["hour", "dow"]}},
        {"name": "nothing", "type": "query"},
    ]}}
    values = template_values(dashboard)
    expr = ('rate(x{job="$job", route=~"${route}", feature=~"[[feature]]", z=~"$nothing"}[$__rate_interval])'
            ' + label_replace(y, "a", "$1", "b", "(.*)")')
    assert substitute(expr, values) == ('rate(x{job="playlistai-api", route=~".*", feature=~"(hour|dow)", '
                                        'z=~".*"}[1m]) + label_replace(y, "a", "$1", "b", "(.*)")')
    with pytest.raises(KeyError):
        substitute("x[$unknown]", values)


# -- the live stack -------------------------------------------------------------------------------

def sent_total(prometheus: str) -> float:
    result = instant(prometheus, 'sum(requests_total{job="playlistai-api", route="/continue"})')
    return float(result[0]["value"][1]) if result else 0.0


class Traffic:
    """POSTs to /continue that give every panel something to show; counts the answers."""

    def __init__(self, api: str, history: list) -> None:
        self.client = httpx.Client(base_url=api, timeout=30)
        self.history = history
        self.statuses: dict[int, int] = {}
        self.rows = 0                        # answers that write a feature row (every 200)

    def post(self, body=None, content: bytes | None = None, expect: int = 200) -> dict | None:
        if content is not None:
            response = self.client.post("/continue", content=content, headers={"content-type": "application/json"})
        else:
            response = self.client.post("/continue", json=body)
        assert response.status_code == expect, (body, response.status_code, response.text[:500])
        self.statuses[expect] = self.statuses.get(expect, 0) + 1
        self.rows += expect == 200
        return response.json()

    def batch(self, number: int, size: int, repeats: int) -> None:
        """`size` fresh requests (every other one through the ANN index), `repeats` of them again
        (cache hits), one with an unknown track, one with only unknown tracks (the popularity
        fallback), a body that is not JSON (400) and an invalid field (422)."""
        requests = self.history[number * size:(number + 1) * size]
        assert len(requests) == size
        bodies = [{"tracks": r.tracks, "k": 10, "context": {"hour": r.hour, "dow": r.dow}, "use_ann": i % 2 == 1}
                  for i, r in enumerate(requests)]
        for body in bodies:
            assert self.post(body)["cached"] is False
        hits = sum(self.post(body)["cached"] for body in bodies[:repeats])
        assert hits > 0, "no repeated request was answered from the cache"
        unknown = self.post({"tracks": [*requests[0].tracks, f"no-such-track-{number}"], "k": 10})
        assert unknown["unknown_tracks"] == [f"no-such-track-{number}"] and not unknown["fallback"], unknown
        fallback = self.post({"tracks": [f"unknown-a-{number}", f"unknown-b-{number}"], "k": 10})
        assert fallback["fallback"] is True, fallback
        self.post(content=b'{"tracks": ["t1", ', expect=400)
        self.post({"tracks": requests[0].tracks, "k": 0}, expect=422)


@pytest.mark.integration
@pytest.mark.slow
def test_every_dashboard_query_returns_data(monitoring_model, monitoring_stack, redis_url):
    queries = panel_queries()
    api, pushgateway, prometheus = monitoring_stack.api, monitoring_stack.pushgateway, monitoring_stack.prometheus

    # two batches, each seen by Prometheus before the next: rate() has increases between scrapes
    size, repeats = 110, 20
    drawn = make_requests(load_split(monitoring_model["data_dir"], "train"), 3 * size, "none", seed=11)
    history = list({(tuple(r.tracks), r.hour, r.dow): r for r in drawn}.values())[:2 * size]   # each a miss
    traffic = Traffic(api, history)
    started = time.time()
    for number in range(2):
        traffic.batch(number, size, repeats)
        answered = sum(traffic.statuses.values())
        wait_until(lambda n=answered: sent_total(prometheus) >= n, 30, f"Prometheus did not scrape batch {number}")
        time.sleep(2 * SCRAPE_INTERVAL_S)        # at least two more scrapes of the same values

    # one drift job run over the feature rows of that traffic, pushed to the Pushgateway
    stream = redis.Redis.from_url(redis_url)
    wait_until(lambda: stream.xlen("playlistai:traffic:v1") >= traffic.rows, 30, "the API did not write its feature rows")
    job = DriftJobConfig(model_uri=monitoring_model["uri"], window=traffic.rows, redis_url=redis_url,
                         state_file=str(monitoring_stack.state_file), pushgateway_url=pushgateway)
    with stage_run("drift", {"window": traffic.rows}):
        state = run_drift_job(job)
    assert state["status"] != "not_enough_data" and state["psi"], state
    wait_until(lambda: instant(prometheus, 'drift_last_success_timestamp_seconds{job="playlistai_drift"}'), 30,
               "Prometheus did not scrape the drift job's push")
    assert traffic.statuses == {200: 2 * (size + repeats + 2), 400: 2, 422: 2}, traffic.statuses

    at = time.time()
    start = at - SCRAPE_INTERVAL_S * math.floor((at - started) / SCRAPE_INTERVAL_S)   # `at` is a step too
    empty, checked = [], 0
    for q in queries:
        vector = instant(prometheus, q["promql"], at)
        matrix = prometheus_api(prometheus, "query_range", query=q["promql"], start=f"{start:.3f}",
                                end=f"{at:.3f}", step=f"{SCRAPE_INTERVAL_S}s")["result"]
        numbers = [float(s["value"][1]) for s in vector]
        problems = []
        if not vector or not any(math.isfinite(v) for v in numbers):
            problems.append(f"instant query: {vector}")
        if not matrix:
            problems.append("range query: no series")
        missing = {label for label in LEGEND_LABEL.findall(q["legend"]) for s in vector if label not in s["metric"]}
        if missing:
            problems.append(f"legend labels {sorted(missing)} absent from {[s['metric'] for s in vector]}")
        checked += 1
        if problems and q["name"] not in EXCUSED:
            empty.append(f"{q['name']}: {q['promql']}\n    " + "\n    ".join(problems))
        if not problems and q["name"] in EXCUSED:
            empty.append(f"{q['name']} is excused but returned data: drop it from EXCUSED")
    assert checked == len(queries) >= 10
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
