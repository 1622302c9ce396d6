"""The real parts a scenario runs against, each a process of its own on a free port.

- `RedisServer`: `redis-server` without persistence; `kill()` is SIGKILL, `start()` brings it back
  on the same port.
- `SlowProxy`: a TCP proxy in front of Redis that can add a delay to every reply (a slow network
  or an overloaded Redis), switched on and off while requests run.
- `MlflowServer`: `mlflow server` on a SQLite or PostgreSQL backend; stop and start at will.
- `ApiServer`: the API as production runs it, `gunicorn serving.main:app -c serving/gunicorn_conf.py`
  with uvicorn workers, configured through the environment like a deployment.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1, what: str = "condition") -> float:
    """Poll `predicate` until it is true; return the seconds it took, raise TimeoutError after `timeout_s`."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception:
            pass
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what} not reached after {timeout_s:.0f} s")
        time.sleep(interval_s)


def stop_process(process: subprocess.Popen | None, timeout_s: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def http_json(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
              timeout_s: float = 10) -> tuple[int, dict | str]:
    """(status, parsed JSON or text) of one request; connection failures raise OSError."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


# -- Redis -----------------------------------------------------------------------------------------

class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), 10, what=f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as when the host or the container dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class SlowProxy:
    """Forwards 127.0.0.1:`port` to `target_port`; every chunk coming back waits `delay_s` first."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.delay_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SlowProxy:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="slow-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _pipe(self, reader, writer, delayed: bool) -> None:
        try:
            while data := await reader.read(65536):
                if delayed and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, upstream_writer, delayed=False),
                             self._pipe(upstream_reader, client_writer, delayed=True))

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


# -- MLflow tracking server ------------------------------------------------------------------------

class MlflowServer:
    def __init__(self, backend_uri: str, artifacts_dir: Path, log_path: Path, port: int | None = None) -> None:
        self.backend_uri = backend_uri
        self.artifacts_dir = artifacts_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> MlflowServer:
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
             "--serve-artifacts", "--artifacts-destination", str(self.artifacts_dir),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True)
        log.close()

        def healthy() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log_path.read_text()[-3000:]}")
            return http_json(f"{self.uri}/health", timeout_s=2)[0] == 200

        wait_until(healthy, timeout_s, interval_s=0.5, what="mlflow server /health")
        return self

    def stop(self) -> None:
        """SIGKILL to the whole process group (the server runs uvicorn workers under a supervisor):
        the port closes at once, as when the host dies, and a restart finds it free."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
            # waiting for the supervisor is not waiting for its workers: the listening socket
            # closes only when the last process holding it has exited
            wait_until(lambda: not port_open(self.port), 10, what=f"port {self.port} closed")
        self.process = None


# -- the API under gunicorn ------------------------------------------------------------------------

class ApiServer:
    """`gunicorn serving.main:app` with `workers` uvicorn workers; `env` configures it like a deployment."""

    def __init__(self, env: dict[str, str], work_dir: Path, workers: int = 2, name: str = "api") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work_dir = work_dir
        self.log_path = work_dir / f"{name}.log"
        self.metrics_dir = work_dir / f"{name}-metrics"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "BIND": f"127.0.0.1:{self.port}",
                    "WEB_CONCURRENCY": str(workers), "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                    "LOG_LEVEL": "info", "TORCH_THREADS": "1", **env}
        self.workers = workers
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready_s: float | None = 180) -> ApiServer:
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "serving.main:app", "-c", str(REPO / "serving" / "gunicorn_conf.py")],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(self._listening, 120, what="gunicorn listening")
        if wait_ready_s:
            # every worker, not the first one up: a check right after the start must see them all
            wait_until(lambda: self.get("/readyz")[0] == 200 and all(h["model_loaded"] for h in self.healthz_all_workers()),
                       wait_ready_s, interval_s=0.25, what="every worker ready")
        return self

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
        return port_open(self.port)

    def get(self, path: str, timeout_s: float = 10) -> tuple[int, dict | str]:
        return http_json(self.url + path, timeout_s=timeout_s)

    def post(self, path: str, payload, headers: dict | None = None, timeout_s: float = 10):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return http_json(self.url + path, "POST", body, {"content-type": "application/json", **(headers or {})},
                         timeout_s)

    def healthz_all_workers(self, tries: int | None = None) -> list[dict]:
        """/healthz as each worker sees it, one body per worker (`worker` names it): new connections
        until every worker answered once, at most `tries` (20 per worker). A worker that did not answer
        any is a body of Nones, which no check takes for a good state."""
        seen: dict[str, dict] = {}
        for _ in range(tries or 20 * self.workers):
            body = self.get("/healthz")[1]
            if not isinstance(body, dict):
                continue
            seen[str(body.get("worker"))] = body
            if len(seen) >= self.workers:
                break
        views = list(seen.values())
        if len(views) < self.workers:
            blank = dict.fromkeys(views[0] if views else ("status", "model_loaded", "cache_connected",
                                                           "model_version", "reason", "worker"))
            views += [blank] * (self.workers - len(views))
        return views

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, summed over workers by the multiprocess collector: name{labels} -> value."""
        status, text = self.get("/metrics")
        samples = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    samples[name] = float(value)
                except ValueError:
                    pass
        return samples

    def metric_sum(self, prefix: str, contains: str = "") -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix) and contains in k)

    def rss_bytes(self) -> int:
        """Resident memory of the master and all its workers."""
        import psutil

        root = psutil.Process(self.process.pid)
        total = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
