"""3. Model rollout during load: `production` moves to a new version, then back, while requests run.

What must hold:
- no request fails during either switch;
- every response names a version the alias pointed at, and each client (one keep-alive
  connection, so one worker) sees the old version, then the new one, never the old one again
  within a switch: a worker swaps models with one assignment and requests in flight finish on the
  model they started with;
- a version's answers are consistent: the same request gets one and the same slate from one
  version, cached or not (the cache key holds the version), and the two versions' slates differ;
- the switch happens within one poll interval, plus the time the new version takes to load
  (`model_load_seconds` in /metrics), on every worker.
"""

from __future__ import annotations

import time

from reliability.components import wait_until
from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix, first_error

KEY = "3"
TITLE = "Model rollout during load"
SWITCH_SLACK_S = 1.0        # the time between a poll's load and the next response on that worker
PROBES_PER_SWITCH = 6       # probe requests sent once every worker serves the new version


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


def _versions_on_every_worker(api, version: str) -> bool:
    return all(h.get("model_version") == version for h in api.healthz_all_workers())


def _probe(api, body: bytes) -> list[tuple[str, tuple]]:
    """(version, slate) of the probe request, sent on fresh connections (so to every worker in turn).

    The load sends the probe too, but as one of its hot bodies: on a loaded machine a version can
    serve for less time than the load takes to come back to it, so each version is probed here as well.
    """
    answers = []
    for _ in range(PROBES_PER_SWITCH):
        status, payload = api.post("/continue", body)
        if status == 200:
            answers.append((payload["model_version"], tuple(item["track_id"] for item in payload["items"])))
    return answers


def _switch(ws, api, generator, old: str, new: str, timeout_s: float) -> tuple[float, float, list]:
    """Move the alias to `new`; -> (when it moved, seconds until every worker serves it, the probes' answers)."""
    ws.set_production(new)
    moved_at = generator.now()
    took = wait_until(lambda: _versions_on_every_worker(api, new), timeout_s, 0.1, f"every worker on version {new}")
    probes = _probe(api, generator.mix.probe)
    time.sleep(ws.profile.poll_s)      # keep the load on the new version for a while
    return moved_at, took, probes


def _monotone_per_client(records, phases) -> list[str]:
    """Clients that saw the old version after the new one within a phase."""
    problems = []
    for start, end, old, new in phases:
        by_client: dict[int, list[str]] = {}
        for r in records:
            if start <= r.sent_at < end and r.status == 200:
                by_client.setdefault(r.client, []).append(r.model_version)
        for client, versions in by_client.items():
            if new in versions and old in versions[versions.index(new):]:
                problems.append(f"client {client} went back to {old} after {new}")
    return problems


def _run(ws, result: ScenarioResult) -> None:
    profile = ws.profile
    old, new = ws.good_versions()
    ws.set_production(old)
    redis = ws.redis()
    api = ws.api("model-rollout", {"REDIS_URL": redis.url})
    mix = RequestMix(ws.vocab, {"cached": 2, "exact": 1, "ann": 1})
    generator = LoadGenerator(api.port, mix, profile.rate_rps, profile.clients).start()
    timeout_s = 3 * profile.poll_s + 120
    try:
        time.sleep(profile.poll_s)
        forward_at, forward_s, probes = _switch(ws, api, generator, old, new, timeout_s)
        back_at, back_s, probes_back = _switch(ws, api, generator, new, old, timeout_s)
    finally:
        records = generator.stop()
    end = generator.now()

    metrics = api.metrics()
    loads = metrics.get("model_load_seconds_count", 0.0)
    mean_load_s = metrics.get("model_load_seconds_sum", 0.0) / loads if loads else float("nan")
    # the slowest of the worker's loads bounds the switch; the mean is what /metrics gives per worker
    switch_bound_s = profile.poll_s + (mean_load_s if loads else 0.0) * 2 + SWITCH_SLACK_S

    answered = [r for r in records if r.status == 200]
    versions_seen = {r.model_version for r in answered}
    probe_slates: dict[str, set] = {}
    for r in answered:
        if r.probe_items is not None:
            probe_slates.setdefault(r.model_version, set()).add(r.probe_items)
    for version, slate in probes + probes_back:
        probe_slates.setdefault(version, set()).add(slate)
    backwards = _monotone_per_client(records, [(forward_at, back_at, old, new), (back_at, end, new, old)])
    stale_after_forward = [r for r in answered if r.sent_at >= forward_at + forward_s and r.sent_at < back_at
                           and r.model_version != new]

    result.figure("requests", len(records))
    result.figure("failed", len([r for r in records if r.status == 0 or r.status >= 500]))
    result.figure(f"switch s {old}->{new}", round(forward_s, 2))
    result.figure(f"switch s {new}->{old}", round(back_s, 2))
    result.figure("poll interval s", profile.poll_s)
    result.figure("model load s (mean)", round(mean_load_s, 2))
    result.figure("versions seen", ",".join(sorted(v or "none" for v in versions_seen)))

    result.check("zero failed requests", not [r for r in records if r.status == 0 or r.status >= 500],
                 first_error(records))
    result.check("every request answered 200", len(answered) == len(records),
                 f"{len(records) - len(answered)} not 200")
    result.check("every response names version old or new", versions_seen <= {old, new} and versions_seen == {old, new},
                 f"seen {sorted(v or 'none' for v in versions_seen)}")
    result.check("no client went back to the old version within a switch", not backwards, "; ".join(backwards[:3]))
    result.check("no old-version answer once every worker reported the new one", not stale_after_forward,
                 f"{len(stale_after_forward)} stale")
    result.check("one slate per version for the same request, cached or not",
                 set(probe_slates) == {old, new} and all(len(s) == 1 for s in probe_slates.values()),
                 f"{ {v: len(s) for v, s in probe_slates.items()} } distinct slates per version")
    result.check("the two versions answer differently (the check above can tell them apart)",
                 len({next(iter(s)) for s in probe_slates.values() if s}) == 2)
    result.check("model_load_seconds is exported", loads > 0, f"{loads:.0f} loads counted")
    result.check("each switch within one poll interval plus the load time on every worker",
                 max(forward_s, back_s) <= switch_bound_s,
                 f"{forward_s:.1f} s and {back_s:.1f} s vs {switch_bound_s:.1f} s")
