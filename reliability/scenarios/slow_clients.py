"""10. Slow and oversized clients: slowloris, idle and half-sent requests, giant and countless headers.

Against the API under gunicorn (serving/edge.py enforces the limits), while normal requests run:
- `sockets` slowloris connections send a request head one byte every 0.5 s, never finishing it;
- `sockets` connections open and send nothing; `sockets // 4` send a head and half a body;
  `sockets // 4` send one request, read the answer, and stay idle (keep-alive);
- 4 clients at once send a header of `giant_header_mb` (64 MB in the full run), 4 one of 64 KiB,
  one client a request with 200 headers, one a request line that is not HTTP.

What must hold:
- the slowloris and idle connections are closed within HEADER_TIMEOUT_S (plus a second of slack),
  the half-sent bodies within BODY_TIMEOUT_S, the kept-alive ones within KEEPALIVE_TIMEOUT_S; those
  that sent part of a request get a JSON 408 first;
- the 64 KiB headers and the 200 headers get a JSON 431 at once and the connection is closed, the
  line that is not HTTP a JSON 400; the giant headers are refused (431) and their connections
  closed within 3 s: a client still sending 64 MB may see the close (a reset) before it reads
  the 431, since the server reads and drops at most 256 KiB after its answer;
- no worker's resident memory grows by 20 MB or more;
- normal requests keep being answered 200, and (full run) their p99 stays within 2x + 5 ms of
  the p99 measured before the attack.
"""

from __future__ import annotations

import threading
import time

from reliability.core import ScenarioResult, run_scenario
from reliability.load import LoadGenerator, RequestMix, stats
from reliability.probes import open_socket, parse_answer, read_until_closed, worker_rss_bytes

KEY = "10"
TITLE = "Slow and oversized clients"
SLACK_S = 1.5
MAX_RSS_GROWTH_MB = 20.0


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


HEAD = b"POST /continue HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"


class Client(threading.Thread):
    """One misbehaving connection: `behave(sock)` sends, then what the server does is recorded."""

    def __init__(self, port: int, kind: str, behave, wait_s: float) -> None:
        super().__init__(daemon=True, name=f"client-{kind}")
        self.port, self.kind, self.behave, self.wait_s = port, kind, behave, wait_s
        self.started_at = 0.0
        self.closed_after_s: float | None = None
        self.outcome = ""
        self.status = 0
        self.body: dict | None = None
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            sock = open_socket(self.port)
        except OSError as exc:
            self.error = f"connect: {exc}"
            return
        self.started_at = time.monotonic()
        try:
            self.behave(sock, self._halt)
        except OSError as exc:        # the server closed while we were sending: read what it said
            self.error = f"send: {type(exc).__name__}"
        data, self.outcome = read_until_closed(sock, self.wait_s)
        self.closed_after_s = time.monotonic() - self.started_at if self.outcome in ("closed", "reset") else None
        self.status, self.body = parse_answer(data)
        sock.close()

    def stop(self) -> None:
        self._halt.set()


def slowloris(sock, stop) -> None:
    """A head one byte every 0.5 s, in a thread of its own so that the reading can start at once."""
    def drip() -> None:
        for byte in HEAD + b"X-Padding: " + b"a" * 1000:
            if stop.wait(0.5):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
    threading.Thread(target=drip, daemon=True).start()


def idle(sock, stop) -> None:
    pass


def half_body(sock, stop) -> None:
    sock.sendall(HEAD + b"Content-Length: 2000\r\n\r\n" + b'{"tracks": ["')


def kept_alive(sock, stop) -> None:
    body = b'{"tracks": ["t000001"], "k": 3}'
    sock.sendall(HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk


def giant_header(megabytes: float):
    def send(sock, stop) -> None:
        sock.sendall(HEAD + b"X-Giant: ")
        chunk = b"a" * 65536
        for _ in range(int(megabytes * 16)):
            sock.sendall(chunk)
        sock.sendall(b"\r\n\r\n")
    return send


def many_headers(sock, stop) -> None:
    sock.sendall(HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"Content-Length: 2\r\n\r\n{}")


def not_http(sock, stop) -> None:
    sock.sendall(b"HELLO THERE\r\n\r\n")


def _run(ws, result: ScenarioResult) -> None:
    profile = ws.profile
    first, _ = ws.good_versions()
    ws.set_production(first)
    full = profile.name == "full"
    header_timeout, body_timeout, keepalive = (5.0, 10.0, 5.0) if full else (2.0, 2.0, 2.0)
    sockets = 100 if full else 20
    giant_mb = 64.0 if full else 8.0
    api = ws.api("slow-clients", {"HEADER_TIMEOUT_S": f"{header_timeout:g}", "BODY_TIMEOUT_S": f"{body_timeout:g}",
                                  "KEEPALIVE_TIMEOUT_S": f"{keepalive:g}"})
    mix = RequestMix(ws.vocab, {"cached": 1, "exact": 1}, distinct=5000, seed=10)
    rate = profile.rate_rps / 2

    # -- before: the normal traffic's p99 ------------------------------------------------------------
    baseline_s = 10.0 if full else 3.0
    before = stats(LoadGenerator(api.port, mix, rate, profile.clients).run_for(baseline_s))
    rss_before = worker_rss_bytes(api)

    # -- the attack, normal traffic alongside -----------------------------------------------------
    generator = LoadGenerator(api.port, mix, rate, profile.clients).start()
    longest = max(header_timeout, body_timeout, keepalive) + SLACK_S + 3
    clients = (
        [Client(api.port, "slowloris", slowloris, longest) for _ in range(sockets)]
        + [Client(api.port, "idle", idle, longest) for _ in range(sockets)]
        + [Client(api.port, "half body", half_body, longest) for _ in range(sockets // 4)]
        + [Client(api.port, "kept alive", kept_alive, longest) for _ in range(sockets // 4)]
        + [Client(api.port, "giant header", giant_header(giant_mb), 30) for _ in range(4)]
        + [Client(api.port, "64 KiB header", giant_header(1 / 16), 10) for _ in range(4)]
        + [Client(api.port, "200 headers", many_headers, 10), Client(api.port, "not HTTP", not_http, 10)]
    )
    for client in clients:
        client.start()
    peak_rss: dict[int, int] = dict(rss_before)
    while any(c.is_alive() for c in clients):
        for pid, rss in worker_rss_bytes(api).items():
            peak_rss[pid] = max(peak_rss.get(pid, 0), rss)
        time.sleep(0.2)
    for client in clients:
        client.stop()
    during = stats(generator.stop())
    growth_mb = max(((peak_rss[pid] - rss_before[pid]) / 2**20 for pid in rss_before if pid in peak_rss), default=0.0)

    def of(kind: str) -> list[Client]:
        return [c for c in clients if c.kind == kind]

    def closed_within(kind: str, bound_s: float) -> tuple[bool, str]:
        group = of(kind)
        times = [c.closed_after_s for c in group]
        late = [c for c in group if c.closed_after_s is None or c.closed_after_s > bound_s]
        slowest = max((t for t in times if t is not None), default=float("nan"))
        return not late, (f"{len(group) - len(late)} of {len(group)} closed within {bound_s:g} s, slowest "
                          f"{slowest:.1f} s; outcomes {sorted({c.outcome for c in late})}")

    def answered(kind: str, status: int) -> tuple[bool, str]:
        group = of(kind)
        good = [c for c in group if c.status == status and isinstance(c.body, dict) and c.body.get("detail")]
        return len(good) == len(group), f"{len(good)} of {len(group)}; got {sorted({c.status for c in group})}"

    result.figure("slowloris sockets", len(of("slowloris")))
    for kind in ("slowloris", "idle", "half body", "kept alive", "giant header"):
        times = [c.closed_after_s for c in of(kind) if c.closed_after_s is not None]
        result.figure(f"{kind}: closed after s (max)", round(max(times), 2) if times else "never")
    result.figure("limits s (head/body/keep-alive)", f"{header_timeout:g}/{body_timeout:g}/{keepalive:g}")
    result.figure("giant header MB", giant_mb)
    result.figure("worker RSS growth MB (max)", round(growth_mb, 1))
    result.figure("normal p99 ms before / during", f"{before['p99_ms']:.1f} / {during['p99_ms']:.1f}")
    result.figure("normal requests during", during["requests"])
    result.figure("edge refusals (metric)", int(api.metric_sum("edge_refusals_total")))

    for kind, bound in (("slowloris", header_timeout), ("idle", header_timeout), ("half body", body_timeout),
                        ("kept alive", keepalive)):
        ok, detail = closed_within(kind, bound + SLACK_S)
        result.check(f"{kind} connections closed within {bound:g} s (+{SLACK_S:g} s)", ok, detail)
    for kind, status in (("slowloris", 408), ("half body", 408), ("64 KiB header", 431), ("200 headers", 431),
                         ("not HTTP", 400)):
        ok, detail = answered(kind, status)
        result.check(f"{kind}: a JSON {status} with a detail", ok, detail)
    giant_s = [c.closed_after_s for c in of("giant header")]
    result.check(f"{giant_mb:g} MB headers refused and closed at once (< 3 s)",
                 all(t is not None and t < 3 for t in giant_s) and all(c.status in (0, 431) for c in of("giant header")),
                 f"closed after {[None if t is None else round(t, 2) for t in giant_s]} s, "
                 f"answers {[c.status or c.outcome for c in of('giant header')]}")
    result.check(f"no worker's memory grew by {MAX_RSS_GROWTH_MB:g} MB or more", growth_mb < MAX_RSS_GROWTH_MB,
                 f"{growth_mb:.1f} MB")
    result.check("normal requests answered 200 throughout", during["requests"] > 0 and during["non_200"] == 0,
                 f"{during['non_200']} of {during['requests']} not 200")
    if profile.enforce_latency:
        bound = 2 * before["p99_ms"] + 5
        result.check("normal p99 within 2x + 5 ms of before the attack", during["p99_ms"] <= bound,
                     f"{during['p99_ms']:.1f} ms vs {before['p99_ms']:.1f} ms before")
