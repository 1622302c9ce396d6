"""Pure ASGI middleware (no BaseHTTPMiddleware: it would cost more than a cached answer does)."""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ERRORS_TOTAL, REQUEST_DURATION_MS, REQUESTS_TOTAL

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


# the bytes that separate or open JSON values: a body's count of them bounds the Python objects
# json.loads builds for it (one per array, object, key and element)
JSON_STRUCTURAL_BYTES = (b"[", b"{", b",", b":")


class BodySizeLimitMiddleware:
    """Refuses request bodies over `max_bytes` with a JSON 413: at once when Content-Length says so,
    or as soon as a streamed (chunked) body passes the limit.

    It also counts, chunk by chunk, the bytes that open or separate JSON values (`[ { , :`), and
    refuses with 413 a body with more than `max_json_tokens` of them: the body `{"pad":[[],[],...]}`
    of 1 MB holds ~350,000 arrays, and parsing it into Python objects would cost tens of ms to
    seconds (the garbage collector walks the heap while they are allocated). The count is done before
    any parsing (`bytes.count`, well under a ms per MB); the limit is set so that no valid request is
    refused, brackets and commas inside its strings included (serving/schemas.py: MAX_JSON_TOKENS)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_json_tokens: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_tokens = max_json_tokens

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
                    await self._refuse(scope, send)
                    return
                break
        received = tokens = 0
        max_tokens = self.max_json_tokens

        async def receive_within_limit() -> Message:
            nonlocal received, tokens
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self.detail)
                if max_tokens is not None and chunk:
                    tokens += sum(chunk.count(b) for b in JSON_STRUCTURAL_BYTES)
                    if tokens > max_tokens:
                        raise HTTPException(status_code=413, detail=(
                            f"request body too complex: over {max_tokens:,} JSON arrays, objects, keys and elements "
                            f"(a valid request has far fewer)"))
            return message

        await self.app(scope, receive_within_limit, send)

    @property
    def detail(self) -> str:
        return f"request body too large (limit {self.max_bytes} bytes)"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        """413 before routing: the route is looked up here, so that the refusal is counted in
        errors_total and requests_total under its route like the 4xx the handlers answer."""
        path = documented_route(scope)
        if path is not None:
            scope["route"] = RouteLabel(path)
        ERRORS_TOTAL.labels(route=path or UNMATCHED_ROUTE, kind="http_413").inc()
        body = json.dumps({"detail": self.detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class RouteLabel:
    """Stands for the route of a request answered before routing (only its `path` is read)."""

    def __init__(self, path: str) -> None:
        self.path = path


def documented_route(scope: Scope) -> str | None:
    """The path of the OpenAPI operation the request is for (exact path and method), or None.

    The application's own OpenAPI document is the public list of its routes (built once, then cached)."""
    openapi = getattr(scope.get("app"), "openapi", None)
    if openapi is None:
        return None
    try:
        operations = openapi().get("paths", {}).get(scope["path"], {})
    except Exception:  # no document, no label: the request is counted as unmatched
        return None
    return scope["path"] if str(scope.get("method", "")).lower() in operations else None
