"""11. Bodies that are costly to parse, sent in parallel with normal traffic.

A 1 MB JSON body of ~350,000 empty arrays (`{"tracks":["a"],"pad":[[],[],...]}`) used to cost
3.7-7 s of CPU: the Python objects the parser built set off full collections of a heap of ~440,000
objects. Now the API counts the bytes that open or separate JSON values before parsing (a 413 past
the most a valid request can hold) and freezes its heap after the model loads (serving/middleware.py,
serving/lifecycle.py). Four clients send bodies of four shapes in turn, each one body every
HEAVY_PAUSE_S (250 ms) after the previous answer (16 MB/s of them in all):
- `arrays`: 1 MB, ~350,000 empty arrays in an unknown field (refused before parsing);
- `arrays at the limit`: as many empty arrays as the count lets through (~64,000), parsed, 422;
- `keys at the limit`: as many unknown keys as the count lets through (~64,000), parsed, 422;
- `long string`: one track id of ~1 MB (one Python object: cheap), 422,
while normal requests run at half the profile's rate.

What must hold: every heavy body gets a 4xx with a JSON detail, or a 503 when the worker sheds it
(no other 5xx, no dropped connection), the 1 MB of arrays a 413; the normal requests are all
answered, at least 90% of them 200 (the rest 503: shed); the median time of the refused 1 MB body
is a few ms; and (full run) the p99 of the normal 200s stays under 120 ms.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix, first_error, stats

KEY = "11"
TITLE = "Costly bodies in parallel with normal traffic"
P99_BOUND_MS = 120.0
REFUSED_MEDIAN_BOUND_MS = 50.0
HEAVY_CLIENTS = 4
HEAVY_PAUSE_S = 0.25


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


def heavy_bodies(max_bytes: int) -> dict[str, bytes]:
    from serving.schemas import MAX_JSON_TOKENS

    head = b'{"tracks":["t000001"],"pad":['
    arrays = (max_bytes - len(head) - 2) // 3
    at_limit = MAX_JSON_TOKENS // 2 - 16          # each `[],` is two of the counted bytes
    keys = MAX_JSON_TOKENS // 2 - 16              # each `"kN":0,` too
    return {
        "arrays": head + b",".join([b"[]"] * arrays) + b"]}",
        "arrays at the limit": head + b",".join([b"[]"] * at_limit) + b"]}",
        "keys at the limit": b'{"tracks":["t000001"],' + b",".join(b'"k%d":0' % i for i in range(keys)) + b"}",
        "long string": b'{"tracks":["' + b"x" * (max_bytes - 64) + b'"]}',
    }


class HeavyClient(threading.Thread):
    def __init__(self, port: int, bodies: dict[str, bytes], offset: int) -> None:
        super().__init__(daemon=True, name=f"heavy-{offset}")
        self.port, self.bodies, self.offset = port, list(bodies.items()), offset
        self.records: list[tuple[str, int, float, str | None]] = []     # kind, status, ms, detail
        self._halt = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = self.offset
        while not self._halt.is_set():
            kind, body = self.bodies[i % len(self.bodies)]
            i += 1
            sent = time.monotonic()
            try:
                connection.request("POST", "/continue", body, {"content-type": "application/json"})
                response = connection.getresponse()
                raw = response.read()
                try:
                    detail = json.loads(raw).get("detail")
                except (ValueError, AttributeError):
                    detail = None
                self.records.append((kind, response.status, (time.monotonic() - sent) * 1000, detail))
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            except (OSError, http.client.HTTPException) as exc:
                self.records.append((kind, 0, (time.monotonic() - sent) * 1000, f"{type(exc).__name__}: {exc}"))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._halt.wait(HEAVY_PAUSE_S)
        connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(40)


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def _run(ws, result: ScenarioResult) -> None:
    profile = ws.profile
    first, _ = ws.good_versions()
    ws.set_production(first)
    api = ws.api("heavy-bodies")
    max_bytes = 1_048_576
    bodies = heavy_bodies(max_bytes)
    mix = RequestMix(ws.vocab, {"cached": 1, "exact": 1}, distinct=5000, seed=11)
    duration = 30.0 if profile.name == "full" else 6.0
    rate = profile.rate_rps / 2

    baseline = stats(LoadGenerator(api.port, mix, rate, profile.clients).run_for(min(10.0, duration / 2)))
    generator = LoadGenerator(api.port, mix, rate, profile.clients).start()
    heavy = [HeavyClient(api.port, bodies, i) for i in range(HEAVY_CLIENTS)]
    for client in heavy:
        client.start()
    time.sleep(duration)
    for client in heavy:
        client.stop()
    normal = generator.stop()
    during = stats(normal)
    records = [r for client in heavy for r in client.records]

    result.figure("body bytes", {k: len(v) for k, v in bodies.items()}["arrays"])
    result.figure("heavy requests", len(records))
    for kind in bodies:
        of_kind = [r for r in records if r[0] == kind]
        statuses = sorted({r[1] for r in of_kind})
        result.figure(f"{kind}: status, median ms", f"{statuses}, {_median([r[2] for r in of_kind]):.1f}")
    result.figure("normal p99 ms before / during", f"{baseline['p99_ms']:.1f} / {during['p99_ms']:.1f}")
    result.figure("normal requests during", during["requests"])

    bad = [r for r in records if not ((400 <= r[1] < 500 or r[1] == 503) and isinstance(r[3], str) and r[3])]
    result.figure("heavy bodies shed (503)", sum(r[1] == 503 for r in records))
    result.check("every heavy body got a 4xx (or a 503 when shed) with a JSON detail", bool(records) and not bad,
                 f"{len(bad)} of {len(records)}: {sorted({(r[0], r[1]) for r in bad})[:4]}")
    refused = [r for r in records if r[0] == "arrays" and r[1] != 503]
    result.check("the 1 MB body of arrays is refused before parsing (413)", bool(refused) and all(
        r[1] == 413 for r in refused), f"{sorted({r[1] for r in refused})}")
    median_refused = _median([r[2] for r in refused])
    result.check(f"... in a median of < {REFUSED_MEDIAN_BOUND_MS:g} ms (it took seconds)",
                 median_refused < REFUSED_MEDIAN_BOUND_MS, f"{median_refused:.1f} ms")
    answered = [r for r in normal if r.status in (200, 503)]
    served = [r for r in normal if r.status == 200]
    p99_served = stats(served)["p99_ms"] if served else float("nan")
    result.figure("normal answered 200 %", round(100 * len(served) / max(1, len(normal)), 1))
    result.figure("normal p99 ms of the 200s", round(p99_served, 1))
    result.check("normal requests all answered (200, or 503 when shed)", bool(normal) and len(answered) == len(normal),
                 f"{len(normal) - len(answered)} of {len(normal)} not: {first_error(normal)}")
    result.check("most normal requests served (>= 90% 200)", len(served) >= 0.9 * len(normal),
                 f"{len(served)} of {len(normal)}")
    if profile.enforce_latency:
        result.check(f"normal p99 < {P99_BOUND_MS:g} ms while heavy bodies arrive", p99_served < P99_BOUND_MS,
                     f"{p99_served:.1f} ms")
