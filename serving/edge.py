"""The edge: what each gunicorn worker enforces on a connection before the app sees a request, and
how it stops.

    gunicorn serving.main:app -c serving/gunicorn_conf.py     # worker_class = serving.edge.EdgeWorker
    python -m serving                                         # one process, the same edge

`EdgeWorker` is uvicorn's gunicorn worker with the HTTP protocol and the server below. gunicorn's
own `limit_request_line`, `limit_request_fields` and `limit_request_field_size` apply only to its
sync workers (its HTTP parser), never to uvicorn's, and uvicorn's default parser (httptools) has no
limit on header size at all: a 64 MB header was read to its end. So:

`EdgeProtocol` is uvicorn's h11 protocol (h11 parses; nothing here does) with:
- header size: h11's `max_incomplete_event_size` = MAX_HEADER_BYTES (16 KiB), request line and
  headers together; more is answered 431 and the connection closed;
- header count: more than MAX_HEADER_COUNT headers, 431;
- read timeouts: a request's line and headers must be in within HEADER_TIMEOUT_S of its first byte
  (or of the connection's start), its body within BODY_TIMEOUT_S of its headers: 408 and close
  (a connection that never sent a byte is closed without an answer); an idle kept-alive connection
  is closed after KEEPALIVE_TIMEOUT_S (uvicorn's own keep-alive timer);
- protocol errors answered as JSON (`{"detail": ...}`) instead of uvicorn's plain text, then a
  lingering close: the answer goes out, the write side is shut, what the client still sends is read
  and dropped for a moment, so that the client reads the answer instead of a reset;
- every request stamped with the time its head was read and the worker's set of request tasks
  (scope["extensions"]), for the load shedding of serving/admission.py;
- while the worker drains, every request answered with `Connection: close`;
- uvicorn's warning per malformed request not logged (an attacker's way to flood the logs): those
  are counted in `edge_refusals_total{kind}` instead.

`EdgeServer` is uvicorn's server with a graceful SIGTERM: the worker drains (serving/lifecycle.py:
`/readyz` 503, `Connection: close` on every response) while it keeps accepting and answering for
SHUTDOWN_DRAIN_S, then stops accepting, lets the accepted requests finish for up to
SHUTDOWN_GRACE_S, and exits. A second SIGTERM, SIGINT or SIGQUIT ends the drain at once. It also
freezes the garbage collector's view of the heap after each model load (serving/lifecycle.py).
Alone (`python -m serving`) it ends by raising the signal it caught again, as uvicorn does, so that
its exit status names the signal. Under gunicorn a drained worker exits 0 instead: gunicorn's master
logs a worker killed by a signal from inside its SIGCHLD handler, and two workers ending together
can make that log line re-enter a write to stderr, a RuntimeError that ends the master with status 1
in the middle of its own graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import Server, ServerState

# no import of serving.metrics (or of the app) here: gunicorn's master imports this module for the
# worker class, before it prepares PROMETHEUS_MULTIPROC_DIR; the metrics are imported in the workers
from serving.lifecycle import LIFECYCLE, OPERATIONS_PATHS, RECEIVED_AT, WORKER_TASKS

log = logging.getLogger("serving.edge")

def _refused(kind: str) -> None:
    from serving.metrics import EDGE_REFUSALS_TOTAL

    EDGE_REFUSALS_TOTAL.labels(kind=kind).inc()


def _probe_answered(path: str, method: str, status: int, ms: float) -> None:
    from serving.metrics import REQUEST_DURATION_MS, REQUESTS_TOTAL

    REQUESTS_TOTAL.labels(path, method, str(status)).inc()
    REQUEST_DURATION_MS.labels(path, str(status)).observe(ms)


def _shed_at_the_edge() -> None:
    from serving.metrics import REQUESTS_SHED_TOTAL

    REQUESTS_SHED_TOTAL.labels(reason="edge").inc()


# An overloaded worker (serving/admission.py: its event loop without a pause for 100 ms) with this
# many requests already queued answers the next one 503 as soon as its head is read, without a task
# or the app: under a flood, refusing must cost much less than answering.
EARLY_SHED_QUEUE = 8


class _QuietProtocolErrors(logging.Filter):
    """uvicorn logs a warning for every request that is not HTTP: one line per attacking connection,
    a way to flood the logs. They are answered (400/431) and counted in edge_refusals_total instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Invalid HTTP request received."


logging.getLogger("uvicorn.error").addFilter(_QuietProtocolErrors())

LINGER_S = 1.0              # after an error answer: how long what the client still sends is read and dropped,
LINGER_MAX_BYTES = 256 * 1024   # and how much of it at most


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    max_header_count: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    drain_s: float
    grace_s: float
    retry_after_s: int = 1

    @classmethod
    def from_settings(cls, settings) -> EdgeLimits:
        return cls(settings.MAX_HEADER_BYTES, settings.MAX_HEADER_COUNT, settings.HEADER_TIMEOUT_S,
                   settings.BODY_TIMEOUT_S, settings.KEEPALIVE_TIMEOUT_S, settings.SHUTDOWN_DRAIN_S,
                   settings.SHUTDOWN_GRACE_S, settings.RETRY_AFTER_S)


@lru_cache(maxsize=1)
def edge_limits() -> EdgeLimits:
    from playlistai.config import get_settings

    return EdgeLimits.from_settings(get_settings())


def configure(config: Config, limits: EdgeLimits) -> Config:
    """uvicorn settings that carry the limits: the protocol, h11's buffer, keep-alive, the grace period,
    and the event loop: asyncio's, not uvloop's. A busy uvloop (libuv) accepts one new connection per
    loop iteration, so that under load a burst of new connections, and the probes' new connections
    behind them, waited seconds in the kernel's accept queue (300 new connections to two busy workers:
    answered after 10.2 s with uvloop, 3.5 s with asyncio, which accepts up to 100 per iteration)."""
    config.loop = "asyncio"
    config.http = "serving.edge:EdgeProtocol"
    config.edge_limits = limits           # read by EdgeProtocol (uvicorn builds it from the config alone)
    config.h11_max_incomplete_event_size = limits.max_header_bytes
    config.timeout_keep_alive = limits.keepalive_timeout_s
    config.timeout_graceful_shutdown = limits.grace_s
    config.server_header = False          # no `server: uvicorn` to fingerprint
    return config


class _Connection(h11.Connection):
    """h11's connection, reporting to the protocol the events it cares about (a request's head, its
    end) and keeping the protocol error it raised, whose status hint (431 for a head over the limit)
    uvicorn's handler does not pass on."""

    def __init__(self, protocol: EdgeProtocol, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.protocol = protocol
        self.error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            event = super().next_event()
            kind = type(event)
            if kind is h11.Request:
                self.protocol.check_head(event)            # may raise RemoteProtocolError (431)
                if self.protocol.answer_probe(event):
                    return self.next_event()               # answered here: what follows is uvicorn's
                self.protocol.on_request_head(event)       # may raise RemoteProtocolError (503)
            elif kind is h11.EndOfMessage:
                self.protocol.on_request_end()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise
        return event


class EdgeProtocol(H11Protocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, limits: EdgeLimits | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or getattr(config, "edge_limits", None) or edge_limits()
        self.conn = _Connection(self, self.limits.max_header_bytes)
        self._timer: asyncio.TimerHandle | None = None
        self._reading: str | None = None      # "head" or "body" while a read timeout runs
        self._bytes_in_request = False        # has the current request sent anything yet
        self._data_at = 0.0                   # time.monotonic() of the latest bytes
        self._lingering = False
        self._lingered_bytes = 0

    # -- connection ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_timer("head", self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_MAX_BYTES:
                self.transport.close()
            return
        self._data_at = time.monotonic()
        if self._reading is None and (self.cycle is None or self.cycle.response_complete):
            # the first bytes of the next request on a kept-alive connection
            self._start_timer("head", self.limits.header_timeout_s)
        self._bytes_in_request = True
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:
            # a request task was created (it has not run yet): what the admission middleware needs
            extensions = self.cycle.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
            extensions[RECEIVED_AT] = self._data_at or time.monotonic()
            extensions[WORKER_TASKS] = self.tasks
            if LIFECYCLE.draining:
                # uvicorn answers a request that asked for `Connection: close` with it, then closes
                self.cycle.scope["headers"].append((b"connection", b"close"))
                self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        self._stop_timer()
        self._bytes_in_request = False
        super().on_response_complete()

    def shutdown(self) -> None:
        if self._lingering or self.conn.our_state in (h11.ERROR, h11.MUST_CLOSE, h11.CLOSED):
            self.transport.close()
            return
        try:
            super().shutdown()
        except h11.LocalProtocolError:
            self.transport.close()

    # -- what h11 reports ------------------------------------------------------------------------
    def check_head(self, event: h11.Request) -> None:
        self._stop_timer()
        if len(event.headers) > self.limits.max_header_count:
            raise h11.RemoteProtocolError(f"{len(event.headers)} headers", error_status_hint=431)
        # h11's limit holds only for a head still incomplete after a read; one that arrives whole in
        # one read (up to 64 KiB) is measured here, as sent: `METHOD target HTTP/1.1`, `name: value`
        size = len(event.method) + len(event.target) + 12 + sum(len(n) + len(v) + 4 for n, v in event.headers) + 2
        if size > self.limits.max_header_bytes:
            raise h11.RemoteProtocolError(f"request head of {size} bytes", error_status_hint=431)

    def on_request_head(self, event: h11.Request) -> None:
        monitor = LIFECYCLE.load_monitor
        if len(self.tasks) >= EARLY_SHED_QUEUE and monitor is not None and monitor.overloaded() and \
                event.target.split(b"?", 1)[0].decode("latin-1") not in OPERATIONS_PATHS:
            raise h11.RemoteProtocolError("overloaded", error_status_hint=503)
        self._start_timer("body", self.limits.body_timeout_s)

    def answer_probe(self, event: h11.Request) -> bool:
        """A plain GET (or HEAD) of /healthz or /readyz is answered at once, from the app's own answer
        functions (serving/api/routes/health.py: probe_answers), before the requests queued on this
        worker: a busy worker answers its probes within one loop iteration. -> answered."""
        probes = LIFECYCLE.probes
        if not probes or event.method not in (b"GET", b"HEAD"):
            return False
        answer = probes.get(event.target.split(b"?", 1)[0].decode("latin-1"))
        if answer is None or any(name in (b"content-length", b"transfer-encoding") for name, _ in event.headers):
            return False
        self._stop_timer()
        self._bytes_in_request = False
        started = time.perf_counter()
        status, body = answer()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if LIFECYCLE.draining:
            headers.append((b"connection", b"close"))
        conn = self.conn
        output = conn.send(h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]))
        output += conn.send(h11.Data(data=body if event.method == b"GET" else b"")) + conn.send(h11.EndOfMessage())
        _probe_answered(event.target.split(b"?", 1)[0].decode("latin-1"), event.method.decode(), status,
                        (time.perf_counter() - started) * 1000.0)
        self.transport.write(output)
        end = h11.Connection.next_event(conn)          # the request's end (a GET without a body has it)
        if type(end) is h11.EndOfMessage and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._unset_keepalive_if_required()        # idle until the next request: keep-alive timer
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)
        else:
            self.transport.close()
        return True

    def on_request_end(self) -> None:
        if self._reading == "body":
            self._stop_timer()

    # -- timeouts --------------------------------------------------------------------------------
    def _start_timer(self, reading: str, seconds: float) -> None:
        self._stop_timer()
        self._reading = reading
        self._timer = self.loop.call_later(seconds, self._timed_out, reading)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reading = None

    def _timed_out(self, reading: str) -> None:
        self._timer = None
        self._reading = None
        if self.transport.is_closing():
            return
        if reading == "head":
            if not self._bytes_in_request:          # an idle connection: no request to answer
                _refused("idle_timeout")
                self.transport.close()
                return
            _refused("head_timeout")
            self._answer_error(408, f"request headers not received within {self.limits.header_timeout_s:g} s")
            return
        _refused("body_timeout")
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # the app, waiting for the body, reads a disconnect; its answer, if any, is dropped
            cycle.disconnected = True
            cycle.message_event.set()
            self._answer_error(408, f"request body not received within {self.limits.body_timeout_s:g} s")
        else:
            self.transport.close()

    # -- error answers ---------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn for any h11 protocol error: answered as JSON, with h11's status hint."""
        error = self.conn.error
        self.conn.error = None
        status = getattr(error, "error_status_hint", 400) if error is not None else 400
        if status == 503:
            self._shed()
            return
        if status == 431:
            kind = "too_many_headers" if "headers" in str(error) else "header_too_large"
            detail = (f"request headers too large: at most {self.limits.max_header_bytes} bytes "
                      f"(request line included) and {self.limits.max_header_count} headers")
        else:
            kind = "malformed"
            detail = f"malformed HTTP request: {str(error or msg)[:200]}"
        _refused(kind)
        self._answer_error(status, detail)

    def _answer_error(self, status: int, detail: str) -> None:
        self._stop_timer()
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            output = self.conn.send(h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]))
            output += self.conn.send(h11.Data(data=body))
            output += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:        # a response had begun: nothing more can be said
            self.transport.close()
            return
        self.transport.write(output)
        self._linger()

    def _shed(self) -> None:
        """503 with Retry-After to a request whose head was just read; the connection stays open (h11
        drops the request's body as it arrives) unless the request or the drain asks to close it."""
        _shed_at_the_edge()
        self._bytes_in_request = False
        body = json.dumps({"detail": f"overloaded: this worker has {len(self.tasks)} requests waiting; "
                                     f"retry after {self.limits.retry_after_s} s"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(self.limits.retry_after_s).encode())]
        if LIFECYCLE.draining:
            headers.append((b"connection", b"close"))
        try:
            output = self.conn.send(h11.Response(status_code=503, headers=headers, reason=STATUS_PHRASES[503]))
            output += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(output)
        if self.conn.our_state is h11.MUST_CLOSE:
            self._linger()
            return
        self._unset_keepalive_if_required()       # idle from now on: uvicorn's keep-alive timer
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def _linger(self) -> None:
        """Shut the write side after the answer and drop what arrives for LINGER_S, then close: closing
        with unread bytes would send a reset, which can reach the client before the answer does."""
        self._lingering = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


class EdgeServer(Server):
    """uvicorn's server; SIGTERM drains first (see the module's docstring)."""

    def __init__(self, config: Config, limits: EdgeLimits | None = None, freeze_gc: bool = True,
                 raise_caught_signals: bool = True) -> None:
        super().__init__(config)
        self.limits = limits or getattr(config, "edge_limits", None) or edge_limits()
        self.freeze_gc = freeze_gc
        self.raise_caught_signals = raise_caught_signals
        self.drain_until: float | None = None
        self._drain_logged = False

    async def startup(self, sockets=None) -> None:
        LIFECYCLE.reset()
        LIFECYCLE.freeze_gc = self.freeze_gc
        await super().startup(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            try:
                yield
            finally:
                if not self.raise_caught_signals:
                    self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # a signal handler: set flags only (no logging, no locks)
        if sig == signal.SIGTERM and not LIFECYCLE.draining and self.started and self.limits.drain_s > 0:
            self._captured_signals.append(sig)
            LIFECYCLE.begin_drain(f"{signal.Signals(sig).name} received")
            self.drain_until = time.monotonic() + self.limits.drain_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None:
            if not self._drain_logged:
                self._drain_logged = True
                log.info("SIGTERM: /readyz answers 503; answering %g s more with Connection: close, then the "
                         "accepted requests have %g s to finish", self.limits.drain_s, self.limits.grace_s)
            if time.monotonic() >= self.drain_until:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        LIFECYCLE.begin_drain("shutting down")
        busy = len(self.server_state.tasks)
        log.info("no longer accepting; %d request(s) in progress get up to %g s", busy, self.limits.grace_s)
        await super().shutdown(sockets=sockets)


with warnings.catch_warnings():          # uvicorn.workers warns that it moves to the uvicorn-worker package
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


class EdgeWorker(UvicornWorker):
    """gunicorn's worker class (serving/gunicorn_conf.py): uvicorn with the edge's protocol and server."""

    CONFIG_KWARGS = {"loop": "asyncio", "http": "serving.edge:EdgeProtocol"}      # see configure()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = edge_limits()
        configure(self.config, self.limits)
        # the edge's lines go where gunicorn's and uvicorn's go, whatever the app configures
        log.handlers = self.log.error_log.handlers
        log.setLevel(self.log.error_log.level)
        log.propagate = False

    async def _serve(self) -> None:
        from gunicorn.arbiter import Arbiter

        self.config.app = self.wsgi
        server = EdgeServer(config=self.config, limits=self.limits, raise_caught_signals=False)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
