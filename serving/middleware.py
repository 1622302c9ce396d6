"""Pure ASGI middleware (no BaseHTTPMiddleware: it would cost more than a cached answer does)."""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import REQUEST_DURATION_MS, REQUESTS_TOTAL

UNMATCHED_ROUTE = "unmatched"     # 404s are not labelled by path, so a scan cannot blow up the series


class RequestMetricsMiddleware:
    """Counts every HTTP request and times it, labelled by route template and status code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            route_label = getattr(route, "path", None) or UNMATCHED_ROUTE
            status_label = str(status)
            REQUESTS_TOTAL.labels(route_label, scope["method"], status_label).inc()
            REQUEST_DURATION_MS.labels(route_label, status_label).observe((time.perf_counter() - started) * 1000.0)


class BodySizeLimitMiddleware:
    """Refuses request bodies over `max_bytes` with a JSON 413: at once when Content-Length says so,
    or as soon as a streamed (chunked) body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
                break
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self.detail)
            return message

        await self.app(scope, receive_within_limit, send)

    @property
    def detail(self) -> str:
        return f"request body too large (limit {self.max_bytes} bytes)"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self.detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
