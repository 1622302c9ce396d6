"""2. Redis faults: Redis killed and restarted, then made slow, while requests run.

The API reaches Redis through a proxy (reliability/components.py: SlowProxy), so that the same
address can be made to answer 200 ms late. What must hold:
- no request fails while Redis is gone or slow: the in-process cache stands in;
- no request waits for a slow Redis: a Redis call gives up after REDIS_TIMEOUT_MS (50 ms), and later calls
  skip Redis until it answers in time again, so the p99 stays far below the injected delay;
- `/healthz` `cache_connected` follows reality on every worker: false while Redis is down or slow,
  true again once it answers;
- after the restart (an empty Redis: it keeps nothing on disk), the hit ratio of the hot requests
  climbs back to what it was before the fault.
"""

from __future__ import annotations

import threading
import time

from reliability.components import SlowProxy, wait_until
from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix, first_error, stats, window

KEY = "2"
TITLE = "Redis faults"
SLOW_DELAY_S = 0.2
RECONNECT_BOUND_S = 10       # the cache's reconnect back-off is capped at 5 s; one more round of slack


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


class HealthWatcher:
    """Polls /healthz (and /metrics, as Prometheus would) in the background: (time, cache_connected) samples."""

    def __init__(self, api, clock, interval_s: float = 0.25) -> None:
        self.api, self.clock, self.interval_s = api, clock, interval_s
        self.samples: list[tuple[float, bool | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval_s):
            tick += 1
            try:
                status, body = self.api.get("/healthz", timeout_s=5)
                self.samples.append((self.clock(), body.get("cache_connected") if status == 200 else None))
                if tick % 8 == 0:
                    self.api.get("/metrics", timeout_s=5)
            except OSError:
                self.samples.append((self.clock(), None))

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, start_s: float, end_s: float) -> list[bool | None]:
        return [c for t, c in self.samples if start_s <= t < end_s]


def hit_ratio(records) -> float:
    hot = [r for r in records if r.kind == "cached" and r.status == 200]
    return sum(bool(r.cached) for r in hot) / len(hot) if hot else float("nan")


def _run(ws, result: ScenarioResult) -> None:
    profile = ws.profile
    first, _ = ws.good_versions()
    ws.set_production(first)
    redis = ws.redis()
    proxy = ws.track(SlowProxy(redis.port).start())
    api = ws.api("redis-faults", {"REDIS_URL": proxy.url})
    health = api.healthz_all_workers()
    result.check("Redis connected at start on every worker", all(h["cache_connected"] for h in health),
                 "; ".join(f"worker {h['worker']}: cache_connected={h['cache_connected']}" for h in health))

    mix = RequestMix(ws.vocab, {"cached": 3, "exact": 1})
    for body in mix.bodies["cached"]:
        api.post("/continue", body)
    generator = LoadGenerator(api.port, mix, profile.rate_rps, profile.clients)
    generator.start()
    watcher = HealthWatcher(api, generator.now).start()
    fault = profile.fault_s

    def settle(seconds: float) -> tuple[float, float]:
        start = generator.now()
        time.sleep(seconds)
        return start, generator.now()

    def all_workers_connected(expected: bool) -> bool:
        return all(h.get("cache_connected") is expected for h in api.healthz_all_workers())

    try:
        before = settle(fault)
        # -- killed, then restarted on the same port ------------------------------------------
        redis.kill()
        killed_at = generator.now()
        down = settle(fault)
        redis.start()
        restarted_at = generator.now()
        reconnect_s = wait_until(lambda: all_workers_connected(True), RECONNECT_BOUND_S + fault, 0.2,
                                 "cache_connected on every worker after the restart")
        after_restart = settle(max(fault, 3.0))
        # -- slow: every reply 200 ms late --------------------------------------------------------
        proxy.delay_s = SLOW_DELAY_S
        slow_at = generator.now()
        slow = settle(fault)
        proxy.delay_s = 0.0
        healed_at = generator.now()
        reconnect_slow_s = wait_until(lambda: all_workers_connected(True), RECONNECT_BOUND_S + fault, 0.2,
                                      "cache_connected on every worker after Redis is fast again")
        recovered = settle(max(fault, 3.0))
    finally:
        records = generator.stop()
        watcher.stop()

    from playlistai.config import Settings

    timeout_ms = float(api.env.get("REDIS_TIMEOUT_MS", Settings.model_fields["REDIS_TIMEOUT_MS"].default))
    s_before, s_down, s_slow = (stats(window(records, *w)) for w in (before, down, slow))
    ratio_before = hit_ratio(window(records, *before))
    ratio_after_restart = hit_ratio(window(records, after_restart[0] + 1.0, after_restart[1]))
    ratio_recovered = hit_ratio(window(records, *recovered))
    # samples taken well inside each phase (a sample in flight at the switch may see either state)
    connected_while_down = watcher.between(killed_at + 1.0, restarted_at)
    connected_while_slow = watcher.between(slow_at + 1.0, healed_at)

    result.figure("requests", len(records))
    result.figure("failed", len([r for r in records if r.status == 0 or r.status >= 500]))
    result.figure("p99 ms before", round(s_before["p99_ms"], 2))
    result.figure("p99 ms Redis down", round(s_down["p99_ms"], 2))
    result.figure("p99 ms Redis +200 ms", round(s_slow["p99_ms"], 2))
    result.figure("max ms Redis +200 ms", round(s_slow["max_ms"], 1))
    result.figure("reconnect s after restart", round(reconnect_s, 2))
    result.figure("reconnect s after slowness", round(reconnect_slow_s, 2))
    result.figure("hit ratio before / after restart / at end",
                  f"{ratio_before:.2f} / {ratio_after_restart:.2f} / {ratio_recovered:.2f}")
    result.figure("cache errors counted", int(api.metric_sum("cache_errors_total")))

    result.check("zero failed requests", not [r for r in records if r.status == 0 or r.status >= 500],
                 first_error(records))
    result.check("every request answered 200", all(r.status == 200 for r in records),
                 f"{sum(r.status != 200 for r in records)} not 200")
    result.check("cache_connected false while Redis is down",
                 bool(connected_while_down) and not any(connected_while_down),
                 f"{len(connected_while_down)} samples, {sum(bool(c) for c in connected_while_down)} said connected")
    result.check("cache_connected false while Redis is slow",
                 bool(connected_while_slow) and not any(connected_while_slow),
                 f"{len(connected_while_slow)} samples, {sum(bool(c) for c in connected_while_slow)} said connected")
    result.check(f"cache_connected true again on every worker within {RECONNECT_BOUND_S} s",
                 reconnect_s <= RECONNECT_BOUND_S and reconnect_slow_s <= RECONNECT_BOUND_S,
                 f"{reconnect_s:.1f} s after the restart, {reconnect_slow_s:.1f} s after the slowness")
    result.check("no request waited for the slow Redis (max latency < the 200 ms delay)",
                 s_slow["max_ms"] < SLOW_DELAY_S * 1000, f"max {s_slow['max_ms']:.0f} ms")
    result.check("hit ratio recovers after the restart (>= 90% of before)",
                 ratio_recovered >= 0.9 * ratio_before, f"{ratio_before:.2f} -> {ratio_recovered:.2f}")
    if profile.enforce_latency:
        bound = s_before["p99_ms"] + timeout_ms + 20
        result.check("p99 while Redis is down or slow bounded by the cache timeout",
                     max(s_down["p99_ms"], s_slow["p99_ms"]) <= bound,
                     f"{s_down['p99_ms']:.1f} / {s_slow['p99_ms']:.1f} ms vs before {s_before['p99_ms']:.1f} ms "
                     f"+ {timeout_ms:g} ms timeout + 20 ms noise")
