"""A real server for the edge tests: uvicorn with the edge's protocol and server (serving/edge.py),
in a thread of the test process, on a free port, with the limits a test chooses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

from uvicorn.config import Config

from reliability.components import free_port
from serving.edge import EdgeLimits, EdgeServer, configure
from serving.lifecycle import LIFECYCLE

LIMITS = EdgeLimits(max_header_bytes=4096, max_header_count=20, header_timeout_s=0.6, body_timeout_s=0.6,
                    keepalive_timeout_s=0.6, drain_s=0.5, grace_s=3.0)


@contextlib.contextmanager
def edge_server(app, limits: EdgeLimits = LIMITS, lifespan: str = "off") -> Iterator[tuple[int, EdgeServer]]:
    port = free_port()
    config = configure(Config(app, host="127.0.0.1", port=port, lifespan=lifespan, log_level="warning",
                              access_log=False, loop="asyncio"), limits)
    server = EdgeServer(config, limits, freeze_gc=False)
    thread = threading.Thread(target=server.run, daemon=True, name="edge-server")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the edge server did not start"
        time.sleep(0.02)
    try:
        yield port, server
    finally:
        server.should_exit = True
        thread.join(30)
        LIFECYCLE.reset()


def connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def read_all(sock: socket.socket, timeout_s: float = 5.0) -> tuple[bytes, str, float]:
    """Everything until the server closes: (bytes, "closed" | "reset" | "timeout", seconds it took)."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, "closed", time.monotonic() - started
            data += chunk
    except TimeoutError:
        return data, "timeout", time.monotonic() - started
    except ConnectionResetError:
        return data, "reset", time.monotonic() - started


def answer(data: bytes) -> tuple[int, dict[str, str], dict | None]:
    """(status, headers, JSON body) of the first answer in `data`."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", len(body)))
        return status, headers, json.loads(body[:length]) if body else None
    except ValueError:
        return status, headers, None


def request_bytes(path: str = "/", method: str = "GET", body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_app(scope, receive, send) -> None:
    """Answers every request with what the edge put in its scope, after reading the body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(float(dict(scope["headers"]).get(b"x-sleep", b"1")))
    extensions = scope.get("extensions") or {}
    payload = json.dumps({"path": scope["path"], "body_bytes": len(body), "draining": LIFECYCLE.draining,
                          "extensions": sorted(extensions)}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
