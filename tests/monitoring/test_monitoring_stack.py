"""Real components end to end: Redis, the API (uvicorn) on a registered tiny model, the Pushgateway,
Prometheus with the repo's config (targets and intervals adapted), the replay and the drift job.
Prometheus must end up with request_duration_ms samples from the API and drift_psi for every
feature, both as pushed by the job and as reported by the API's /metrics."""

from __future__ import annotations

import httpx
import pytest

from monitoring.drift_job import PUSH_JOB, DriftJobConfig, run_drift_job
from monitoring.replay import replay_from_data_dir
from playlistai.tracking import stage_run
from tests.monitoring.conftest import instant, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TESTED = {"history_len", "hour", "dow", "unknown_share", "mean_pop_pct"}   # top_score has no training reference


def test_prometheus_scrapes_the_api_and_the_drift_job(monitoring_model, monitoring_stack, redis_url):
    api, pushgateway, prometheus = monitoring_stack.api, monitoring_stack.pushgateway, monitoring_stack.prometheus

    outcome = replay_from_data_dir(api, monitoring_model["data_dir"], 400, "hour", seed=5)
    assert outcome["statuses"] == {200: 400}, outcome
    job = DriftJobConfig(model_uri=monitoring_model["uri"], window=400, redis_url=redis_url,
                         state_file=str(monitoring_stack.state_file), pushgateway_url=pushgateway)
    with stage_run("drift", {"window": 400}):
        state = run_drift_job(job)
    assert state["status"] == "drift" and state["n_current"] >= 200 and state["psi"]["hour"] > 0.25, state

    api_metrics = httpx.get(f"{api}/metrics", timeout=5).text
    assert f'drift_psi{{feature="hour"}} {state["psi"]["hour"]}' in api_metrics

    def scraped():
        latency = instant(prometheus, 'request_duration_ms_bucket{job="playlistai-api", route="/continue"}')
        pushed = {s["metric"]["feature"] for s in instant(prometheus, f'drift_psi{{job="{PUSH_JOB}"}}')}
        reported = {s["metric"]["feature"] for s in instant(prometheus, 'drift_psi{job="playlistai-api"}')}
        return latency and pushed == TESTED and reported == TESTED

    wait_until(scraped, 30, "Prometheus did not scrape the latency histogram and drift_psi of every feature")
    hour = instant(prometheus, f'drift_psi{{job="{PUSH_JOB}", feature="hour"}}')
    assert float(hour[0]["value"][1]) == pytest.approx(state["psi"]["hour"])
    requests = instant(prometheus, 'sum(requests_total{job="playlistai-api", route="/continue"})')
    assert float(requests[0]["value"][1]) >= 400
