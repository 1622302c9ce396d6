"""An open-loop HTTP load generator in a process of its own, for loads past the API's capacity.

    python -m reliability.flood --port 8088 --bodies bodies.json --out records.json \\
        --mode open --rate 1200 --duration 60          # 1,200 requests/s, whatever the answers
    python -m reliability.flood ... --mode closed --concurrency 4 --duration 5   # capacity

`reliability/load.py` keeps one blocking connection per thread, so it cannot offer more than its
threads can wait for, and its threads share the GIL with the scenario's probes. This one runs on
one asyncio (uvloop) loop in a separate process: in `open` mode it sends request i at i / rate
seconds, on a kept-alive connection that is idle, or on a new one (up to --max-connections), so the
offered rate never slows down with the server. HTTP is spoken by h11 (client side).

Each request is recorded as [sent_at_s, latency_ms, status, kind, error, retry_after]: status 0 is
no answer, and `error` says why: "timeout" (no answer within --timeout), "reset" (the connection was
reset), "closed" (closed without an answer), "refused" (a new connection was refused), "busy" (no
connection was free: the generator, not the server, is the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque

import h11

HEADERS = [("host", "api"), ("content-type", "application/json")]


# A kept-alive connection idle this long is not used again (the API closes them after
# KEEPALIVE_TIMEOUT_S, 5 s): as HTTP clients do, so as not to send on a connection being closed.
MAX_IDLE_S = 3.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()

    def stale(self) -> bool:
        return self.reader.at_eof() or time.monotonic() - self.idle_since > MAX_IDLE_S

    def close(self) -> None:
        self.writer.close()


async def connect(port: int) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Connection(reader, writer)


async def exchange(conn: Connection, path: str, body: bytes) -> tuple[int, bool, bool]:
    """-> (status, keep the connection, the answer had Retry-After)."""
    c = conn.h11
    data = c.send(h11.Request(method="POST", target=path, headers=[*HEADERS, ("content-length", str(len(body)))]))
    data += c.send(h11.Data(data=body)) + c.send(h11.EndOfMessage())
    conn.writer.write(data)
    status, retry_after = 0, False
    while True:
        event = c.next_event()
        if event is h11.NEED_DATA:
            chunk = await conn.reader.read(65536)
            if not chunk and status == 0:
                raise EOFError("closed without an answer")
            c.receive_data(chunk)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            retry_after = any(name == b"retry-after" for name, _ in event.headers)
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise EOFError("closed during the answer")
    keep = c.our_state is h11.DONE and c.their_state is h11.DONE
    if keep:
        c.start_next_cycle()
    return status, keep, retry_after


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, (EOFError, asyncio.IncompleteReadError, h11.RemoteProtocolError)):
        return "closed"
    return f"other:{type(exc).__name__}"


class Flood:
    def __init__(self, port: int, bodies: list[tuple[str, bytes]], timeout_s: float, max_connections: int,
                 path: str = "/continue") -> None:
        self.port, self.bodies, self.timeout_s = port, bodies, timeout_s
        self.max_connections, self.path = max_connections, path
        self.idle: deque[Connection] = deque()
        self.open = 0
        self.records: list[list] = []
        self.started = 0.0
        self._next_body = 0

    def body(self) -> tuple[str, bytes]:
        kind, body = self.bodies[self._next_body % len(self.bodies)]
        self._next_body += 1
        return kind, body

    async def one(self, sent_at: float, kind: str, body: bytes) -> None:
        conn: Connection | None = None
        status, error, retry_after = 0, "", False
        try:
            while self.idle and self.idle[-1].stale():
                self.idle.pop().close()
                self.open -= 1
            while self.idle and self.idle[0].stale():        # the oldest, unused for long
                self.idle.popleft().close()
                self.open -= 1
            if self.idle:
                conn = self.idle.pop()
            elif self.open < self.max_connections:
                self.open += 1
                try:
                    conn = await asyncio.wait_for(connect(self.port), self.timeout_s)
                except BaseException:
                    self.open -= 1
                    raise
            else:
                error = "busy"
            if conn is not None:
                status, keep, retry_after = await asyncio.wait_for(exchange(conn, self.path, body), self.timeout_s)
                if keep:
                    conn.idle_since = time.monotonic()
                    self.idle.append(conn)
                else:
                    conn.close()
                    self.open -= 1
                conn = None
        except Exception as exc:
            error = _error_name(exc)
            if conn is not None:
                conn.close()
                self.open -= 1
        latency_ms = (time.monotonic() - self.started - sent_at) * 1000.0
        self.records.append([round(sent_at, 4), round(latency_ms, 3), status, kind, error, retry_after])

    async def open_loop(self, rate: float, duration_s: float) -> None:
        tasks = set()
        self.started = time.monotonic()
        total = int(rate * duration_s)
        for i in range(total):
            at = i / rate
            delay = self.started + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind, body = self.body()
            task = asyncio.create_task(self.one(time.monotonic() - self.started, kind, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout_s + 5)

    async def closed_loop(self, concurrency: int, duration_s: float) -> None:
        self.started = time.monotonic()
        end = self.started + duration_s

        async def client() -> None:
            while time.monotonic() < end:
                kind, body = self.body()
                await self.one(time.monotonic() - self.started, kind, body)

        await asyncio.gather(*(client() for _ in range(concurrency)))

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.flood", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bodies", required=True, help="JSON list of [kind, body text]")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=("open", "closed"), default="open")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--path", default="/continue")
    args = parser.parse_args(argv)

    bodies = [(kind, text.encode()) for kind, text in json.loads(open(args.bodies).read())]
    flood = Flood(args.port, bodies, args.timeout, args.max_connections, args.path)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run

    async def drive() -> None:
        try:
            if args.mode == "open":
                await flood.open_loop(args.rate, args.duration)
            else:
                await flood.closed_loop(args.concurrency, args.duration)
        finally:
            flood.close()

    try:
        run(drive())
    finally:
        with open(args.out, "w") as out:
            json.dump(flood.records, out, separators=(",", ":"))
    return 0


# -- for the scenarios: run it and read its records -------------------------------------------------

class FloodRecord(tuple):
    """(sent_at_s, latency_ms, status, kind, error, retry_after)"""

    sent_at = property(lambda self: self[0])
    latency_ms = property(lambda self: self[1])
    status = property(lambda self: self[2])
    kind = property(lambda self: self[3])
    error = property(lambda self: self[4])
    retry_after = property(lambda self: self[5])


def start_flood(port: int, bodies: list[tuple[str, bytes]], work_dir, name: str, *, mode: str = "open",
                rate: float = 100.0, concurrency: int = 4, duration_s: float = 10.0, timeout_s: float = 10.0,
                max_connections: int = 512):
    """Start the generator as a subprocess; `finish_flood(handle)` waits for it and reads its records."""
    import subprocess
    from pathlib import Path

    work_dir = Path(work_dir)
    bodies_file, out = work_dir / f"{name}-bodies.json", work_dir / f"{name}-records.json"
    bodies_file.write_text(json.dumps([[kind, body.decode()] for kind, body in bodies]))
    command = [sys.executable, "-m", "reliability.flood", "--port", str(port), "--bodies", str(bodies_file),
               "--out", str(out), "--mode", mode, "--rate", str(rate), "--concurrency", str(concurrency),
               "--duration", str(duration_s), "--timeout", str(timeout_s), "--max-connections", str(max_connections)]
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, out, duration_s + timeout_s + 60


def finish_flood(handle) -> list[FloodRecord]:
    process, out, wait_s = handle
    _, stderr = process.communicate(timeout=wait_s)
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"the load generator failed ({process.returncode}): {stderr[-2000:]}")
    return [FloodRecord(r) for r in json.loads(out.read_text())]


def run_flood(*args, **kwargs) -> list[FloodRecord]:
    return finish_flood(start_flood(*args, **kwargs))


if __name__ == "__main__":
    sys.exit(main())
