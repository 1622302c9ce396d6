"""12. SIGTERM under load: the gunicorn master gets SIGTERM (as Kubernetes sends it to the
container's first process) while requests run, and a burst of requests has just been sent.

Load runs on kept-alive connections at the profile's rate; `burst` more requests (uncached, so that
they queue) are each sent on a new connection, and once all of them are written, SIGTERM goes to the
master. A prober asks `/readyz` every 100 ms on new connections.

What must hold:
- no request sent before the signal goes unanswered: the burst and the load's requests all get an
  HTTP answer (200, or 503 when a worker sheds part of the burst), none is reset;
- `/readyz` answers 503 within a second of the signal (the workers drain), and the workers keep
  answering requests during the drain;
- the master exits by itself, with status 0, within SHUTDOWN_DRAIN_S + SHUTDOWN_GRACE_S (+5 s).
Requests sent after the signal are answered during the drain, then refused at connect once the
workers stop accepting; how many of them ended otherwise (a reset of a connection being opened as
the worker closed) is reported.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time

from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix
from reliability.probes import Prober

KEY = "12"
TITLE = "SIGTERM under load"
DRAIN_S = 2.0            # SHUTDOWN_DRAIN_S of the API under test (the product default)
GRACE_S = 15.0           # SHUTDOWN_GRACE_S (the product default)
READY_FALSE_BOUND_S = 1.0


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


class BurstRequest(threading.Thread):
    """One request on a connection of its own: sent, then (after `go`) its answer read."""

    def __init__(self, port: int, body: bytes, sent: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.sent = port, body, sent
        self.status = 0
        self.error: str | None = None
        self.written = False

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=GRACE_S + DRAIN_S + 10)
        try:
            connection.request("POST", "/continue", self.body, {"content-type": "application/json"})
            self.written = True
        except OSError as exc:
            self.error = f"send: {type(exc).__name__}: {exc}"
        try:
            self.sent.wait(30)
        except threading.BrokenBarrierError:
            pass
        if not self.written:
            return
        try:
            response = connection.getresponse()
            response.read()
            self.status = response.status
        except (OSError, http.client.HTTPException) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()


def _run(ws, result: ScenarioResult) -> None:
    profile = ws.profile
    first, _ = ws.good_versions()
    ws.set_production(first)
    api = ws.api("sigterm", {"SHUTDOWN_DRAIN_S": f"{DRAIN_S:g}", "SHUTDOWN_GRACE_S": f"{GRACE_S:g}"})
    mix = RequestMix(ws.vocab, {"cached": 1, "exact": 2}, distinct=5000, seed=12)
    burst_size = 64 if profile.name == "full" else 24

    generator = LoadGenerator(api.port, mix, profile.rate_rps, profile.clients).start()
    ready = Prober(api.port, "/readyz", interval_s=0.1, timeout_s=3.0).start(generator.started_at)
    time.sleep(3.0 if profile.name == "full" else 2.0)

    sent = threading.Barrier(burst_size + 1)
    burst = [BurstRequest(api.port, body, sent) for body in mix.bodies["exact"][-burst_size:]]
    for request in burst:
        request.start()
    sent.wait(30)
    os.kill(api.process.pid, signal.SIGTERM)
    signal_at = generator.now()
    signalled = time.monotonic()
    try:
        returncode = api.process.wait(timeout=DRAIN_S + GRACE_S + 15)
    except Exception:
        returncode = None
    exit_s = time.monotonic() - signalled
    for request in burst:
        request.join(10)
    time.sleep(0.5)
    records = generator.stop()
    probes = ready.stop()

    before = [r for r in records if r.sent_at < signal_at]
    in_flight = [r for r in before if r.sent_at + r.latency_ms / 1000 >= signal_at]
    after = [r for r in records if r.sent_at >= signal_at]
    unanswered_before = [r for r in before if r.status == 0]
    burst_unanswered = [b for b in burst if b.status == 0]
    answered_after = [r for r in after if r.status]
    refused_after = [r for r in after if r.status == 0 and r.error and "Refused" in r.error]
    failed_after = [r for r in after if r.status == 0 and r not in refused_after]
    ready_after = [p for p in probes if p.at_s >= signal_at + READY_FALSE_BOUND_S]
    ready_before = [p for p in probes if p.at_s + p.latency_ms / 1000 < signal_at]    # answered before it
    first_503 = next((p.at_s - signal_at for p in probes if p.at_s >= signal_at and p.status == 503), None)
    log = api.log_text()

    result.figure("burst requests", burst_size)
    result.figure("burst answers", {s: sum(b.status == s for b in burst) for s in sorted({b.status for b in burst})})
    result.figure("load requests sent before (in flight at) / after the signal", f"{len(before)} ({len(in_flight)}) / "
                  f"{len(after)}")
    result.figure("after the signal: answered / refused at connect / other", f"{len(answered_after)} / "
                  f"{len(refused_after)} / {len(failed_after)}")
    result.figure("s to /readyz 503", round(first_503, 2) if first_503 is not None else "never")
    result.figure("s to exit", round(exit_s, 1))
    result.figure("exit status", returncode)

    result.check("/readyz was 200 before the signal", bool(ready_before) and ready_before[-1].status == 200,
                 f"last {ready_before[-1].status if ready_before else None}")
    result.check("every burst request sent before the signal answered", not burst_unanswered,
                 f"{len(burst_unanswered)} of {burst_size}: {[b.error for b in burst_unanswered][:3]}")
    result.check("every load request sent before the signal answered (0 resets)", not unanswered_before,
                 f"{len(unanswered_before)} of {len(before)}: "
                 f"{[r.error for r in unanswered_before][:3]}")
    result.check(f"/readyz 503 within {READY_FALSE_BOUND_S:g} s of the signal", first_503 is not None and
                 first_503 <= READY_FALSE_BOUND_S + 0.2, f"after {first_503} s")
    result.check("/readyz never 200 again after that", all(p.status != 200 for p in ready_after),
                 f"{sum(p.status == 200 for p in ready_after)} of {len(ready_after)} said 200")
    result.check("requests were still answered during the drain", bool(answered_after),
                 f"{len(answered_after)} answered after the signal")
    result.check(f"the master exited by itself with status 0 within {DRAIN_S + GRACE_S + 5:g} s",
                 returncode == 0 and exit_s <= DRAIN_S + GRACE_S + 5, f"status {returncode} after {exit_s:.1f} s"
                 + ("" if returncode == 0 else "; gunicorn's log ends: " + log[-1500:]))
    result.check("each worker logged its drain", log.count("SIGTERM: /readyz answers 503") >= api.workers,
                 f"{log.count('SIGTERM: /readyz answers 503')} of {api.workers} workers")
