"""What the scenarios of the edge use besides load: a liveness prober as Kubernetes runs it, raw
sockets for slow and oversized clients, and the resident memory of each worker."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    at_s: float             # since the prober started
    latency_ms: float
    status: int             # 0: no answer within the timeout
    body: dict | None
    connect_ms: float = 0.0  # of latency_ms: until the TCP connection was established


class Prober:
    """GET `path` every `interval_s` on a new connection each time (as the kubelet probes), with a
    `timeout_s` of its own: (time, latency, status, body) samples."""

    def __init__(self, port: int, path: str = "/healthz", interval_s: float = 0.2, timeout_s: float = 5.0) -> None:
        self.port, self.path, self.interval_s, self.timeout_s = port, path, interval_s, timeout_s
        self.samples: list[Probe] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe{path}", daemon=True)

    def start(self, started_at: float | None = None) -> Prober:
        """`started_at`: the time.monotonic() its sample times count from (another component's clock)."""
        self.started = time.monotonic() if started_at is None else started_at
        self._thread.start()
        return self

    def stop(self) -> list[Probe]:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)
        return self.samples

    def now(self) -> float:
        return time.monotonic() - self.started

    def probe_once(self) -> Probe:
        at = self.now()
        sent = time.monotonic()
        status, body, connect_ms = 0, None, 0.0
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        try:
            connection.connect()
            connect_ms = (time.monotonic() - sent) * 1000.0
            connection.request("GET", self.path)
            response = connection.getresponse()
            raw = response.read()
            status = response.status
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        except (OSError, http.client.HTTPException):
            status = 0
        finally:
            connection.close()
        return Probe(at, (time.monotonic() - sent) * 1000.0, status, body, connect_ms)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.samples.append(self.probe_once())
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def between(self, start_s: float, end_s: float) -> list[Probe]:
        return [p for p in self.samples if start_s <= p.at_s < end_s]


# -- raw sockets ------------------------------------------------------------------------------------

def open_socket(port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float, limit: int = 65536) -> tuple[bytes, str]:
    """What the server sends until it closes: (bytes, "closed" | "reset" | "timeout")."""
    sock.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    try:
        while len(data) < limit:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return data, "closed"
            data += chunk
    except TimeoutError:
        return data, "timeout"
    except ConnectionResetError:
        return data, "reset"
    except OSError as exc:
        return data, f"error:{type(exc).__name__}"
    return data, "open"


def parse_answer(data: bytes) -> tuple[int, dict | None]:
    """(status, JSON body) of one HTTP answer read off a raw socket (0, None when there is none)."""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def worker_rss_bytes(api) -> dict[int, int]:
    """Resident memory of each gunicorn worker of `api` (reliability/components.py: ApiServer)."""
    import psutil

    out = {}
    for child in psutil.Process(api.process.pid).children():
        try:
            out[child.pid] = child.memory_info().rss
        except psutil.Error:
            pass
    return out
