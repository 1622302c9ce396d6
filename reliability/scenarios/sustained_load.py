"""1. Sustained load: the API under gunicorn answers a steady mix of cached, uncached and ANN
requests for `sustained_s` with no 5xx, a p99 that does not drift, and no memory leak.

The rate is the profile's `rate_rps`: in the full run 200 requests/s, about half of what
`bench-serve` measured as the capacity of this mix on this machine (BENCHMARKS.md: 339 exact, 248
ANN, 1,692 cached requests/s at 8 clients), since the load generator here shares the two cores.
The p99 bound compares like with like, in one run: the first 30 s after warm-up are the benchmark
window, and the p99 of the whole run must stay within 2x of it. Memory is the resident set of the
gunicorn master and its workers, sampled every few seconds; growth is measured from the end of
warm-up (models loaded, caches filled, allocator pools grown) to the end of the run.
"""

from __future__ import annotations

import threading
import time

from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix, first_error, stats, window

KEY = "1"
TITLE = "Sustained load"
REFERENCE_WINDOW_S = 30
MAX_P99_RATIO = 2.0
MAX_MEMORY_GROWTH = 0.10


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


def _run(ws, result: ScenarioResult) -> None:
    profile = ws.profile
    first, _ = ws.good_versions()
    ws.set_production(first)
    redis = ws.redis()
    api = ws.api("sustained-load", {"REDIS_URL": redis.url})
    mix = RequestMix(ws.vocab, {"cached": 1, "exact": 1, "ann": 1})
    for body in mix.bodies["cached"]:            # the hot bodies are in Redis before the clock starts
        api.post("/continue", body)

    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    generator = LoadGenerator(api.port, mix, profile.rate_rps, profile.clients)

    def sample_memory() -> None:
        while not stop.wait(min(5.0, profile.sustained_s / 20)):
            samples.append((generator.now(), api.rss_bytes()))

    generator.start()
    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    time.sleep(profile.sustained_s)
    records = generator.stop()
    stop.set()
    sampler.join()

    measured = window(records, profile.warmup_s)
    reference = window(records, profile.warmup_s, profile.warmup_s + min(REFERENCE_WINDOW_S, profile.sustained_s / 3))
    whole = stats(measured, profile.sustained_s - profile.warmup_s)
    ref = stats(reference)
    rss_start = _median([rss for t, rss in samples if t >= profile.warmup_s][:3])
    rss_end = _median([rss for _, rss in samples][-3:])
    growth = (rss_end - rss_start) / rss_start if rss_start else float("nan")
    by_kind = {kind: stats([r for r in measured if r.kind == kind]) for kind in ("cached", "exact", "ann")}

    result.figure("requests", len(records))
    result.figure("req/s", round(whole["rps"], 1))
    result.figure("p50 ms", round(whole["p50_ms"], 2))
    result.figure("p99 ms", round(whole["p99_ms"], 2))
    result.figure("benchmark-window p99 ms", round(ref["p99_ms"], 2))
    for kind, s in by_kind.items():
        result.figure(f"{kind} p99 ms", round(s["p99_ms"], 2))
    result.figure("5xx", whole["5xx"])
    result.figure("RSS MiB after warm-up", round(rss_start / 2**20, 1))
    result.figure("RSS growth %", round(100 * growth, 2))
    result.figure("cache hits", int(api.metric_sum("cache_hits_total")))

    result.check("zero 5xx and zero unanswered requests", len([r for r in records if r.status == 0 or r.status >= 500]) == 0,
                 f"{whole['5xx']} 5xx, {sum(r.status == 0 for r in records)} unanswered {first_error(records)}")
    result.check("every request answered 200", all(r.status == 200 for r in records),
                 f"{sum(r.status != 200 for r in records)} not 200")
    result.check("the offered rate was sustained (>= 90% of the target)", whole["rps"] >= 0.9 * profile.rate_rps,
                 f"{whole['rps']:.0f} of {profile.rate_rps:.0f} req/s")
    if profile.enforce_latency:
        result.check(f"p99 within {MAX_P99_RATIO:g}x of the benchmark window",
                     whole["p99_ms"] <= MAX_P99_RATIO * ref["p99_ms"],
                     f"{whole['p99_ms']:.1f} ms vs {ref['p99_ms']:.1f} ms")
        result.check(f"resident memory grows < {MAX_MEMORY_GROWTH:.0%} after warm-up", growth < MAX_MEMORY_GROWTH,
                     f"{rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB ({growth:+.1%})")


def _median(values: list[float]) -> float:
    values = sorted(values)
    return float(values[len(values) // 2]) if values else float("nan")
