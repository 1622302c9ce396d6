"""Load shedding and deadlines, per worker: what keeps the latency of the answered requests bounded
when more arrive than a worker can score.

A worker scores on its event loop, a few ms per request. What it cannot keep up with has to wait
somewhere visible, and be refused early and cheaply once waiting is pointless:
- `ScoringQueue`: a request with its body parsed waits here for its turn to score, one per turn of
  the event loop, so that the loop reads its sockets between two (new requests are stamped with
  their arrival, probes are answered) and a request's whole wait is known at its turn. One that
  waited longer than QUEUE_TIMEOUT_MS (250 ms), or longer than QUEUE_TARGET_MS (50 ms) while the
  worker is overloaded, is refused with a JSON 503 and `Retry-After` at its turn. Overloaded: the
  queue has not been empty for 100 ms (a standing queue: the idea of CoDel and of Facebook's
  adaptive queue timeout: a burst is absorbed, a standing queue is not), a model load aside;
- `AdmissionMiddleware`, before the body is read: the same test on the wait so far (the edge,
  serving/edge.py, stamps each request with the time its head was read), and a 503 for any request
  beyond MAX_CONCURRENT_REQUESTS held by the worker (queued, reading its body or running);
- the edge itself answers 503 to a new request of an overloaded worker with 8 requests queued,
  without a task or the app (serving/edge.py: under a flood, refusing must cost little).

An admitted request gets a deadline, REQUEST_TIMEOUT_MS after its arrival: `/continue` answers 504
instead of scoring once it has passed (a body that arrived too slowly, a stall). The operations
routes (`/healthz`, `/readyz`, `/metrics`, `/admin/reload`) are never refused: liveness and
readiness must answer however loaded the worker is (and the edge answers the probes itself).

While the worker drains (serving/lifecycle.py) every response says `Connection: close`, so that
kept-alive clients reconnect, to another replica, before the worker stops accepting.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.lifecycle import DEADLINE, LIFECYCLE, OPERATIONS_PATHS, RECEIVED_AT, WORKER_TASKS, Lifecycle
from serving.metrics import ERRORS_TOTAL, REQUESTS_SHED_TOTAL
from serving.middleware import RouteLabel, documented_route

__all__ = ["DEADLINE", "RECEIVED_AT", "WORKER_TASKS", "AdmissionMiddleware", "LoopLagMonitor", "ScoringQueue",
           "deadline_passed", "received_at"]

CLOSE = (b"connection", b"close")

LAG_PERIOD_S = 0.005          # the loop-lag timer's period
OVERLOAD_WINDOW_S = 0.1       # no prompt timer for this long: the worker is overloaded
RELOAD_GRACE_S = 1.0          # after a model load: the backlog it left drains before overload is judged


class LoopLagMonitor:
    """A timer every LAG_PERIOD_S on the worker's event loop: when none ran within `prompt_s` of its
    time for OVERLOAD_WINDOW_S, the loop has had no pause for that long, and the worker is overloaded."""

    def __init__(self, prompt_s: float) -> None:
        self.prompt_s = prompt_s
        self.last_prompt = time.monotonic()
        self.last_lag_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expected = 0.0

    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        self._loop = loop
        self.last_prompt = time.monotonic()
        self._expected = self.last_prompt + LAG_PERIOD_S
        loop.call_later(LAG_PERIOD_S, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return                     # a monitor restarted on another loop (tests)
        now = time.monotonic()
        self.last_lag_s = now - self._expected
        if self.last_lag_s <= self.prompt_s:
            self.last_prompt = now
        self._expected = now + LAG_PERIOD_S
        loop.call_later(LAG_PERIOD_S, self._tick, loop)

    def overloaded(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) - self.last_prompt > OVERLOAD_WINDOW_S


def wait_refusal(waited_s: float, overloaded: bool, timeout_s: float, target_s: float) -> str | None:
    """Why a request that waited `waited_s` for its worker is refused (the queue timeout, or the
    tighter target while the worker is overloaded), or None when it may go on."""
    limit = target_s if overloaded else timeout_s
    if waited_s <= limit:
        return None
    return (f"the request waited {waited_s * 1000:.0f} ms for this worker (limit {limit * 1000:.0f} ms"
            f"{' while it is overloaded' if overloaded else ''})")


class ScoringQueue:
    """The requests of a worker that wait to score, first in first out, one at a time; between two,
    the event loop reads its sockets.

    Scoring is synchronous on the event loop. Without this queue, the requests that arrived together
    were scored back to back in one turn of the loop, and whatever arrived meanwhile (a probe, the next
    requests) was not even read until all were done: under overload a turn lasted 100 ms and more, and
    a request's wait could not be seen. Here a request that has its body and wants to score takes a
    ticket; the one scoring hands over to the next when it is done, and the next scores at a later
    turn of the loop, after the sockets were read. At its turn, a request that waited longer than the
    queue timeout (QUEUE_TIMEOUT_MS, or QUEUE_TARGET_MS while overloaded) is refused with 503 instead:
    the refusal is decided with the whole wait known. Overloaded: the queue has not been empty for
    OVERLOAD_WINDOW_S (a standing queue, as CoDel calls it)."""

    def __init__(self, queue_timeout_s: float, queue_target_s: float) -> None:
        self.queue_timeout_s = queue_timeout_s
        self.queue_target_s = min(queue_target_s, queue_timeout_s)
        self._waiters: deque[asyncio.Future] = deque()
        self._busy = False
        self.last_empty = time.monotonic()

    def __len__(self) -> int:
        return len(self._waiters) + self._busy

    def overloaded(self, now: float | None = None) -> bool:
        """The queue has not been empty for OVERLOAD_WINDOW_S: requests arrive faster than they are
        scored. Not while a model loads, nor for RELOAD_GRACE_S after (a hot reload competes for the
        CPU for about a second, on every worker at once: the backlog it leaves is the worker's own
        doing, absorbed at the QUEUE_TIMEOUT_MS, not a reason to refuse at the QUEUE_TARGET_MS)."""
        now = time.monotonic() if now is None else now
        if LIFECYCLE.model_loading or now - LIFECYCLE.model_loaded_at < RELOAD_GRACE_S:
            return False
        return bool(self._busy or self._waiters) and now - self.last_empty > OVERLOAD_WINDOW_S

    def turn(self, received: float) -> _Turn:
        """`async with queue.turn(received) as refusal`: None when the request may score now (until the
        block ends), else why it is refused."""
        return _Turn(self, received)

    async def _acquire(self, received: float) -> str | None:
        future = asyncio.get_running_loop().create_future()
        if not self._busy and not self._waiters:
            self.last_empty = time.monotonic()     # empty until now: a standing queue starts here, not at the last one's end
        self._waiters.append(future)
        if not self._busy:
            self._next()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._hand_on()            # it was this request's turn: pass it on
            else:
                future.cancel()            # skipped by _next
            raise
        now = time.monotonic()
        refusal = wait_refusal(now - received, self.overloaded(now), self.queue_timeout_s, self.queue_target_s)
        if refusal is not None:
            self._hand_on()
        return refusal

    def _hand_on(self) -> None:
        """The turn passes at the next turn of the loop, not now: a request that comes along in this
        one (another of the requests read together) queues instead of scoring right after."""
        asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                self._busy = True
                future.set_result(None)    # it runs at the next turn of the loop, after the sockets are read
                return
        self._busy = False
        self.last_empty = time.monotonic()


class _Turn:
    __slots__ = ("queue", "received", "admitted")

    def __init__(self, queue: ScoringQueue, received: float) -> None:
        self.queue, self.received, self.admitted = queue, received, False

    async def __aenter__(self) -> str | None:
        refusal = await self.queue._acquire(self.received)
        self.admitted = refusal is None
        return refusal

    async def __aexit__(self, *exc) -> None:
        if self.admitted:
            self.queue._hand_on()


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, max_concurrent: int, queue_timeout_s: float, queue_target_s: float,
                 request_timeout_s: float, retry_after_s: int, queue: ScoringQueue | None = None,
                 lifecycle: Lifecycle = LIFECYCLE) -> None:
        self.app = app
        self.max_concurrent = max_concurrent
        self.queue_timeout_s = queue_timeout_s
        self.queue_target_s = min(queue_target_s, queue_timeout_s)
        self.request_timeout_s = request_timeout_s
        self.retry_after = str(int(retry_after_s)).encode()
        self.lifecycle = lifecycle
        self.monitor = LoopLagMonitor(self.queue_target_s / 2)
        self.queue = queue
        lifecycle.load_monitor = self      # the edge sheds early when overloaded() (serving/edge.py)
        self.active = 0                # requests inside the app (what counts when no edge hands its tasks over)

    @classmethod
    def options(cls, settings) -> dict:
        return {"max_concurrent": settings.MAX_CONCURRENT_REQUESTS,
                "queue_timeout_s": settings.QUEUE_TIMEOUT_MS / 1000.0,
                "queue_target_s": settings.QUEUE_TARGET_MS / 1000.0,
                "request_timeout_s": settings.REQUEST_TIMEOUT_MS / 1000.0,
                "retry_after_s": settings.RETRY_AFTER_S}

    def overloaded(self, now: float | None = None) -> bool:
        """The queue's view (a standing queue); without a queue (an app of tests), the loop's lag."""
        if self.queue is not None:
            return self.queue.overloaded(now)
        return self.monitor.overloaded(now)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        extensions = scope.get("extensions")
        if extensions is None:
            extensions = scope["extensions"] = {}
        received = extensions.get(RECEIVED_AT, now)
        if self.lifecycle.draining:
            send = _closing(send)
        if scope["path"] in OPERATIONS_PATHS:
            await self.app(scope, receive, send)
            return

        self.monitor.ensure_started()
        tasks = extensions.get(WORKER_TASKS)
        held = len(tasks) if tasks is not None else self.active + 1
        if held > self.max_concurrent:
            await self._shed(scope, send, "concurrency",
                             f"this worker holds {held} requests (limit {self.max_concurrent})")
            return
        refusal = wait_refusal(now - received, self.overloaded(now), self.queue_timeout_s, self.queue_target_s)
        if refusal is not None:
            await self._shed(scope, send, "queue", refusal)
            return
        extensions.setdefault(RECEIVED_AT, received)
        extensions[DEADLINE] = received + self.request_timeout_s
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _shed(self, scope: Scope, send: Send, reason: str, why: str) -> None:
        """503 before any work: the body is not read, the connection stays open (unless draining)."""
        path = documented_route(scope)
        if path is not None:
            scope["route"] = RouteLabel(path)
        REQUESTS_SHED_TOTAL.labels(reason=reason).inc()
        ERRORS_TOTAL.labels(route=path or "unmatched", kind="http_503").inc()
        body = json.dumps({"detail": f"overloaded: {why}; retry after {self.retry_after.decode()} s"}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", self.retry_after)]})
        await send({"type": "http.response.body", "body": body})


def shed_response(scope: Scope, why: str, retry_after_s: int) -> Response:
    """The 503 of a request refused at its turn to score (ScoringQueue)."""
    REQUESTS_SHED_TOTAL.labels(reason="queue").inc()
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    ERRORS_TOTAL.labels(route=route, kind="http_503").inc()
    return JSONResponse({"detail": f"overloaded: {why}; retry after {retry_after_s} s"}, status_code=503,
                        headers={"retry-after": str(retry_after_s)})


def received_at(scope: Scope) -> float:
    return (scope.get("extensions") or {}).get(RECEIVED_AT) or time.monotonic()


def deadline_passed(scope: Scope) -> bool:
    deadline = (scope.get("extensions") or {}).get(DEADLINE)
    return deadline is not None and time.monotonic() > deadline


def _closing(send: Send) -> Send:
    async def send_with_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, CLOSE]}
        await send(message)

    return send_with_close
