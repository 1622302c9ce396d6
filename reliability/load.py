"""An open-loop load generator that keeps every answer, so that scenarios can check each one.

`clients` threads each hold one keep-alive connection (so one gunicorn worker answers a thread's
requests until the connection drops) and send at `rate_rps / clients`, on a fixed schedule that does
not slow down when the server does. Every response is recorded: when it was sent, how long it took,
its status, and for a 200 the `model_version` and `cached` fields of the body.

Requests mix three kinds (`mix` weights): `cached` cycles over a few hot bodies (Redis hits once
warm), `exact` and `ann` send distinct bodies (misses, scored exactly or through the FAISS index).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass

import numpy as np

HOT_BODIES = 50


@dataclass(frozen=True)
class Record:
    sent_at: float          # seconds since the generator started
    latency_ms: float
    status: int             # 0 = no HTTP answer (connection refused, reset, timeout)
    kind: str
    client: int
    model_version: str | None = None
    cached: bool | None = None
    error: str | None = None
    probe_items: tuple | None = None   # the slate of a probe body, to compare across responses


def request_bodies(vocab, n: int, seed: int, use_ann: bool, k: int = 20) -> list[bytes]:
    """Histories of 5-50 known tracks drawn by popularity, random hour and day, k=20."""
    rng = np.random.default_rng(seed)
    weights = vocab.counts / vocab.counts.sum()
    bodies = []
    for length in rng.integers(5, 51, size=n):
        picks = rng.choice(len(vocab), size=int(length), p=weights)
        bodies.append(json.dumps({
            "tracks": [vocab.track_ids[i] for i in picks], "k": k,
            "context": {"hour": int(rng.integers(0, 24)), "dow": int(rng.integers(0, 7))}, "use_ann": use_ann,
        }, separators=(",", ":")).encode())
    return bodies


class RequestMix:
    """Bodies of each kind, drawn by weight; `cached` cycles over HOT_BODIES bodies."""

    def __init__(self, vocab, mix: dict[str, float], distinct: int = 20_000, seed: int = 0) -> None:
        self.kinds = [k for k, w in mix.items() if w > 0]
        weights = np.array([mix[k] for k in self.kinds], dtype=float)
        self.weights = weights / weights.sum()
        self.bodies = {
            "cached": request_bodies(vocab, HOT_BODIES, seed + 1, use_ann=False),
            "exact": request_bodies(vocab, distinct if "exact" in self.kinds else 1, seed + 2, use_ann=False),
            "ann": request_bodies(vocab, distinct if "ann" in self.kinds else 1, seed + 3, use_ann=True),
        }
        self.probe = self.bodies["cached"][0]
        self._rng = np.random.default_rng(seed)
        self._counters = dict.fromkeys(self.bodies, 0)
        self._lock = threading.Lock()

    def next(self) -> tuple[str, bytes]:
        with self._lock:
            kind = self.kinds[int(self._rng.choice(len(self.kinds), p=self.weights))]
            i = self._counters[kind]
            self._counters[kind] += 1
        bodies = self.bodies[kind]
        return kind, bodies[i % len(bodies)]


class LoadGenerator:
    def __init__(self, port: int, mix: RequestMix, rate_rps: float, clients: int, timeout_s: float = 10) -> None:
        self.port = port
        self.mix = mix
        self.rate_rps = rate_rps
        self.clients = clients
        self.timeout_s = timeout_s
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> LoadGenerator:
        self.started_at = time.monotonic()
        self._stop.clear()
        for client in range(self.clients):
            thread = threading.Thread(target=self._client, args=(client,), name=f"load-{client}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Record]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)
        self._threads.clear()
        return self.records

    def run_for(self, seconds: float) -> list[Record]:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def now(self) -> float:
        return time.monotonic() - self.started_at

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)

    def _client(self, client: int) -> None:
        interval = self.clients / self.rate_rps
        next_at = time.monotonic() + interval * client / self.clients
        connection = self._connect()
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + interval, time.monotonic() - interval)   # no catch-up burst after a stall
            kind, body = self.mix.next()
            record, connection = self._send(connection, client, kind, body)
            with self._lock:
                self.records.append(record)
        connection.close()

    def _send(self, connection, client: int, kind: str, body: bytes):
        sent = time.monotonic()
        try:
            connection.request("POST", "/continue", body, {"content-type": "application/json"})
            response = connection.getresponse()
            raw = response.read()
            status = response.status
            if response.getheader("connection", "").lower() == "close":
                connection.close()
                connection = self._connect()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            connection = self._connect()
            return Record(sent - self.started_at, (time.monotonic() - sent) * 1000, 0, kind, client,
                          error=f"{type(exc).__name__}: {exc}"), connection
        latency_ms = (time.monotonic() - sent) * 1000
        version = cached = probe = None
        error = None
        if status == 200:
            payload = json.loads(raw)
            version, cached = payload.get("model_version"), payload.get("cached")
            if body is self.mix.probe:
                probe = tuple(item["track_id"] for item in payload["items"])
        else:
            error = raw[:300].decode("utf-8", "replace")
        return Record(sent - self.started_at, latency_ms, status, kind, client, version, cached, error, probe), connection


# -- statistics ------------------------------------------------------------------------------------

def window(records: list[Record], start_s: float = 0.0, end_s: float = float("inf")) -> list[Record]:
    return [r for r in records if start_s <= r.sent_at < end_s]


def percentile(records: list[Record], q: float) -> float:
    return float(np.percentile([r.latency_ms for r in records], q)) if records else float("nan")


def failed(records: list[Record]) -> list[Record]:
    """No answer, or a 5xx: what a client sees as the service failing it."""
    return [r for r in records if r.status == 0 or r.status >= 500]


def stats(records: list[Record], seconds: float | None = None) -> dict:
    if not records:
        return {"requests": 0}
    span = seconds or (max(r.sent_at for r in records) - min(r.sent_at for r in records)) or 1.0
    return {
        "requests": len(records),
        "rps": len(records) / span,
        "p50_ms": percentile(records, 50),
        "p99_ms": percentile(records, 99),
        "max_ms": max(r.latency_ms for r in records),
        "failed": len(failed(records)),
        "5xx": sum(r.status >= 500 for r in records),
        "non_200": sum(r.status != 200 for r in records),
    }


def first_error(records: list[Record]) -> str:
    bad = failed(records) or [r for r in records if r.status != 200]
    return f"first: status {bad[0].status} {bad[0].error}" if bad else ""
