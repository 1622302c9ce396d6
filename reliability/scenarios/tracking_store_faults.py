"""5. Tracking store faults: the MLflow server is down when the API starts, and goes down while it serves.

The API resolves `playlistai@production` through a real `mlflow server` over the workspace's SQLite
store (the versions' artifacts are local folders, read in place). What must hold:
- (a) started while the server is down, the API stays up: `/readyz` answers 503 with "cannot reach
  the tracking store at http://...", `/healthz` says `unavailable`, and each worker's log shows its
  retries with growing delays (1 s, doubling up to the poll interval). Once the server is up, every
  worker is ready within one back-off delay plus one model load: the bound checked is the longest
  delay plus the seconds the loads took (`model_load_seconds_sum`) plus a margin.
- (b) with the server stopped for `fault_s` while requests run (several polls fail), no request
  fails, `/readyz` stays 200, `/healthz` is `degraded` with a reason naming the tracking store, and
  the failed polls are counted in `errors_total{kind="model_resolve"}`; once the server is back,
  health is `ok` again within a few poll intervals.
- (c) with a PostgreSQL tracking store that refuses connections at start (MLflow alone would retry a
  database for ~100 s), the API's port opens within MODEL_STARTUP_WAIT_S plus gunicorn's own start,
  and `/healthz` on every worker says `unavailable`, naming the store (without its password) and why.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

from reliability.components import free_port, port_open, wait_until
from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix, failed, first_error

KEY = "5"
TITLE = "Tracking store faults"
START_TIMEOUT_S = 90          # the API's first answer, or a state to be reached, on a busy machine
RETRIES_SEEN = 4              # tries logged per worker before the server is started: 1, 2, 4, ... s
READY_MARGIN_S = 5.0          # the server's first answers and the health checks themselves
RECOVER_POLLS = 3
RESOLVE_ERRORS = 'kind="model_resolve"'
STARTUP_WAIT_S = 10          # MODEL_STARTUP_WAIT_S, the production default
BOOT_MARGIN_S = 20           # gunicorn, the imports and the workers' start on a busy machine
RETRY_LINE = re.compile(r"\[(\d+)\] \w+ serving[\w.]*: .*next try in ([\d.]+) s")


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


def _run(ws, result: ScenarioResult) -> None:
    first, _ = ws.good_versions()
    ws.set_production(first)
    server = ws.mlflow_server(start=False)
    try:
        _down_at_start(ws, result, server)
        _down_while_serving(ws, result, server, first)
    finally:
        server.stop()
    _database_down_at_start(ws, result)


def retry_delays(log_text: str) -> dict[str, list[float]]:
    """Each worker's logged delays before its next try, in order: pid -> [seconds]."""
    delays: dict[str, list[float]] = defaultdict(list)
    for line in log_text.splitlines():
        if match := RETRY_LINE.search(line):
            delays[match[1]].append(float(match[2]))
    return dict(delays)


def _down_at_start(ws, result: ScenarioResult, server) -> None:
    profile = ws.profile
    retry_cap_s = max(4.0, 4 * profile.poll_s)      # long enough for the back-off to show: 1, 2, 4, ...
    api = ws.api("tracking-down-at-start", {"MLFLOW_TRACKING_URI": server.uri, "MODEL_POLL_S": f"{retry_cap_s:g}"},
                 wait_ready_s=None)
    expected = f"cannot reach the tracking store at {server.uri}"
    try:
        seen: dict = {}

        def refused() -> bool:
            seen["readyz"] = api.get("/readyz")
            return seen["readyz"][0] == 503 and expected in str(seen["readyz"][1])

        try:
            wait_until(refused, START_TIMEOUT_S, interval_s=0.25, what="readiness refused")
        except TimeoutError:
            pass
        status, body = seen.get("readyz", (None, None))
        result.check("(a) server down at start: /readyz 503 naming the tracking store", status == 503
                     and expected in str(body), f"{status} {body}")
        try:
            wait_until(lambda: len(retry_delays(api.log_text())) == api.workers and all(
                len(d) >= RETRIES_SEEN for d in retry_delays(api.log_text()).values()),
                START_TIMEOUT_S, interval_s=0.5, what="retries logged")
        except TimeoutError:
            pass
        health = api.healthz_all_workers()
        alive = api.process.poll() is None
        delays = retry_delays(api.log_text())
        growing = len(delays) == api.workers and all(
            len(d) >= RETRIES_SEEN and d == sorted(d) and d[0] < d[-1] and max(d) <= retry_cap_s
            for d in delays.values())
        result.check("(a) the API stays up, /healthz says unavailable",
                     alive and all(h["status"] == "unavailable" for h in health),
                     f"running={alive}, {sorted({h['status'] for h in health})}")
        result.check(f"(a) each worker logs its retries with growing delays, up to {retry_cap_s:g} s", growing,
                     "; ".join(f"worker {pid}: {', '.join(f'{s:g}' for s in d)} s" for pid, d in delays.items()))

        server.start()
        up = time.monotonic()

        def all_ready() -> bool:
            return all(h["model_loaded"] for h in api.healthz_all_workers()) and api.get("/readyz")[0] == 200

        try:
            ready_s = wait_until(all_ready, START_TIMEOUT_S, interval_s=0.2, what="API ready")
        except TimeoutError:
            ready_s = None
        load_s = api.metric_sum("model_load_seconds_sum")
        bound_s = retry_cap_s + load_s + READY_MARGIN_S
        result.check("(a) every worker ready after the server came up, within the longest back-off delay "
                     "plus the model loads", ready_s is not None and ready_s <= bound_s,
                     f"{ready_s:.1f} s <= {retry_cap_s:g} + {load_s:.1f} + {READY_MARGIN_S:g} s" if ready_s is not None
                     else f"not ready {time.monotonic() - up:.0f} s after: {api.healthz_all_workers()}")
        result.figure("back-off delays s", ", ".join(f"{s:g}" for s in next(iter(delays.values()), [])))
        result.figure("s to ready after the server came up", round(ready_s, 1) if ready_s is not None else "-")
        result.figure("ready bound s", round(bound_s, 1))
    finally:
        api.stop()


def _down_while_serving(ws, result: ScenarioResult, server, version: str) -> None:
    profile = ws.profile
    if server.process is None or server.process.poll() is not None:
        server.start()
    api = ws.api("tracking-down-while-serving", {"MLFLOW_TRACKING_URI": server.uri})
    mix = RequestMix(ws.vocab, {"cached": 1, "exact": 1}, distinct=5_000)
    generator = LoadGenerator(api.port, mix, profile.rate_rps / 2, min(4, profile.clients))
    named = f"tracking store at {server.uri}"
    outage, poll_failures = {}, 0.0
    generator.start()
    try:
        time.sleep(2 * profile.poll_s)
        resolve_errors_before = api.metric_sum("errors_total", RESOLVE_ERRORS)
        down = time.monotonic()
        server.stop()                                 # the port closes first, the processes end after
        stopped = time.monotonic()
        closed = not port_open(server.port)
        seen: dict = {}

        def degraded() -> bool:
            seen["health"] = api.healthz_all_workers()
            return all(h["status"] == "degraded" and named in str(h["reason"]) and h["model_version"] == version
                       for h in seen["health"])

        try:
            wait_until(degraded, START_TIMEOUT_S, interval_s=0.2, what="health degraded")
            detect_s = time.monotonic() - down
        except TimeoutError:
            detect_s = None
        readiness = []
        while time.monotonic() - stopped < max(profile.fault_s, 3 * profile.poll_s):   # then several polls more
            readiness.append(api.get("/readyz")[0])
            time.sleep(0.25)
        readiness.append(api.get("/readyz")[0])
        reasons = sorted({str(h["reason"]) for h in seen.get("health", [])})

        server.start()
        outage["s"] = time.monotonic() - down
        try:
            recover_s = wait_until(lambda: all(h["status"] == "ok" and h["reason"] is None
                                               for h in api.healthz_all_workers()),
                                   START_TIMEOUT_S, interval_s=0.2, what="health ok")
        except TimeoutError:
            recover_s = None
        time.sleep(profile.poll_s)
        poll_failures = api.metric_sum("errors_total", RESOLVE_ERRORS) - resolve_errors_before
    finally:
        records = generator.stop()
        api.stop()
    log_lines = [line for line in api.log_text().splitlines()
                 if named in line and "keeps serving" in line and "next check in" in line]

    answered = [r for r in records if r.status == 200]
    versions = sorted({r.model_version for r in answered})
    recover_bound = RECOVER_POLLS * profile.poll_s + READY_MARGIN_S
    result.check("(b) the server's port is closed during the outage", closed, f"port {server.port}")
    result.check("(b) /healthz degraded on every worker, the reason naming the tracking store", detect_s is not None,
                 f"{detect_s:.1f} s after the stop began (it took {stopped - down:.1f} s): {reasons}"
                 if detect_s is not None else f"{seen.get('health')}")
    result.check("(b) /readyz stays 200 during the outage (the model still serves)",
                 readiness and all(s == 200 for s in readiness), f"{len(readiness)} probes: {sorted(set(readiness))}")
    result.check("(b) the failed polls are counted in errors_total", poll_failures >= api.workers,
                 f"+{poll_failures:.0f} {RESOLVE_ERRORS}")
    result.check("(b) each failed poll is logged with the next check", len(log_lines) >= api.workers,
                 f"{len(log_lines)} lines, e.g. {log_lines[0].split('serving.model_store: ', 1)[-1] if log_lines else '-'}")
    result.check(f"(b) /healthz ok again within {RECOVER_POLLS} polls after the server is back",
                 recover_s is not None and recover_s <= recover_bound,
                 f"{recover_s:.1f} s <= {recover_bound:g} s" if recover_s is not None else "not recovered")
    result.check("(b) zero failed requests during the outage", not failed(records),
                 f"{len(failed(records))} of {len(records)} {first_error(records)}")
    result.check("(b) every request answered 200 by the served version", len(answered) == len(records) > 0
                 and versions == [version], f"{len(records) - len(answered)} not 200; versions {versions}")
    result.figure("outage s", round(outage.get("s", 0.0), 1))
    result.figure("requests", len(records))
    result.figure("failed requests", len(failed(records)))
    result.figure("poll failures counted", int(poll_failures))
    result.figure("s to recover", round(recover_s, 1) if recover_s is not None else "-")


def _database_down_at_start(ws, result: ScenarioResult) -> None:
    port = free_port()                               # nothing listens there: every connection is refused
    store = f"postgresql://127.0.0.1:{port}/mlflow"
    started = time.monotonic()
    api = ws.api("database-down-at-start", {"MLFLOW_TRACKING_URI": f"postgresql://playlistai:secret@127.0.0.1:{port}/mlflow",
                                            "MODEL_STARTUP_WAIT_S": f"{STARTUP_WAIT_S:g}"}, wait_ready_s=None)
    seen: dict = {}

    def every_worker_answers() -> bool:      # gunicorn binds the port at once: the workers' answers count
        seen["health"] = api.healthz_all_workers()
        return all(h.get("status") is not None for h in seen["health"])

    try:
        wait_until(every_worker_answers, START_TIMEOUT_S, interval_s=0.2, what="every worker answers")
        open_s = time.monotonic() - started
    except TimeoutError:
        open_s = float("inf")
    finally:
        api.stop()
    health = seen.get("health", [])
    reasons = sorted({str(h["reason"]) for h in health})
    bound_s = STARTUP_WAIT_S + BOOT_MARGIN_S
    result.check(f"(c) PostgreSQL down at start: every worker answers within {STARTUP_WAIT_S} + {BOOT_MARGIN_S} s",
                 open_s <= bound_s, f"{open_s:.1f} s")
    result.check("(c) /healthz unavailable on every worker, naming the store and why, without its password",
                 len(health) == api.workers and all(h["status"] == "unavailable" and f"tracking store at {store}" in
                                                    str(h["reason"]) for h in health)
                 and not any("secret" in r for r in reasons), "; ".join(reasons)[:300])
    result.figure("s to answers with PostgreSQL down", round(open_s, 1))
