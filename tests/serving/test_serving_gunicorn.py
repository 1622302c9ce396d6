"""The production command, run once: gunicorn with two uvicorn workers, metrics summed over both;
and `make api`, which runs it with a worker per core and a metrics folder of its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from reliability.components import VENV_BIN, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 40


def counter_value(metrics_text: str, sample: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gunicorn_serves_with_two_workers_and_sums_their_metrics(tiny_registry, tmp_path):
    gunicorn = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "gunicorn"
    if not gunicorn.exists():
        gunicorn = REPO / ".venv" / "bin" / "gunicorn"
    port = free_port()
    env = {
        **os.environ,
        "MODEL_URI": str(tiny_registry["packages"]["1"]),
        "API_PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "REDIS_URL": "",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen([str(gunicorn), "serving.main:app", "-c", "serving/gunicorn_conf.py"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
            try:
                health = httpx.get(f"{base}/healthz", timeout=2).json()
                if health["model_loaded"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert health and health["model_loaded"], (tmp_path / "gunicorn.log").read_text()[-3000:]

        for i in range(REQUESTS):
            # a new connection each time, so that both workers take some
            response = httpx.post(f"{base}/continue", json={"tracks": ["t000001", "t000002"], "k": 5,
                                                            "context": {"hour": i % 24, "dow": 3}}, timeout=10)
            assert response.status_code == 200, response.text
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        served = counter_value(metrics, 'requests_total{method="POST",route="/continue",status="200"}')
        assert served == REQUESTS, metrics[:2000]
        # each worker has its own in-process cache (no Redis here): hits and misses add up to all requests
        misses = counter_value(metrics, 'cache_misses_total{backend="local"}')
        hits = counter_value(metrics, 'cache_hits_total{backend="local"}')
        assert misses >= 24 and misses + hits == REQUESTS
        assert len(list((tmp_path / "metrics").glob("counter_*.db"))) >= 2   # both workers wrote

        # the edge's limits are the ones in effect under gunicorn (its own limit_request_* are not)
        big = httpx.get(f"{base}/healthz", headers={"x-pad": "a" * 20_000}, timeout=5)
        assert big.status_code == 431 and "request headers too large" in big.json()["detail"]
        assert httpx.get(f"{base}/healthz", headers={"x-pad": "a" * 8_000}, timeout=5).status_code == 200
    finally:
        server.send_signal(15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def start_gunicorn(app: str, port: int, tmp_path, **env) -> subprocess.Popen:
    gunicorn = REPO / ".venv" / "bin" / "gunicorn"
    log = (tmp_path / "gunicorn.log").open("w")
    return subprocess.Popen(
        [str(gunicorn), app, "-c", "serving/gunicorn_conf.py"], cwd=REPO,
        env={**os.environ, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2", "PYTHONPATH": str(REPO), **env},
        stdout=log, stderr=subprocess.STDOUT)


def wait_listening(port: int, server: subprocess.Popen, tmp_path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError((tmp_path / "gunicorn.log").read_text()[-3000:])


def test_sigterm_to_the_master_lets_the_accepted_requests_finish(tmp_path):
    """gunicorn with the edge's worker: SIGTERM to the master while slow requests run; each is
    answered, the workers log their drain, and the master exits 0 within the drain and grace periods."""
    import threading

    port = free_port()
    server = start_gunicorn("tests.serving.edge_helpers:echo_app", port, tmp_path, SHUTDOWN_DRAIN_S="1",
                            SHUTDOWN_GRACE_S="10")
    try:
        wait_listening(port, server, tmp_path)
        answers: list[int] = []

        def slow() -> None:
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{port}/slow", headers={"x-sleep": "2"}, timeout=20)
                               .status_code)
            except httpx.HTTPError as exc:
                answers.append(repr(exc))

        threads = [threading.Thread(target=slow) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        server.send_signal(15)
        for thread in threads:
            thread.join(20)
        assert answers == [200] * 6, answers
        assert server.wait(timeout=20) == 0
        assert time.monotonic() - signalled < 1 + 10 + 5
        log = (tmp_path / "gunicorn.log").read_text()
        assert log.count("SIGTERM: /readyz answers 503") == 2, log[-3000:]
        # a drained worker exits 0: a worker ended by a signal makes the master log from its SIGCHLD
        # handler, which can crash it (status 1) when two workers end together
        assert "was sent" not in log and "exited with code" not in log, log[-3000:]
    finally:
        if server.poll() is None:
            server.kill()


CONTINUE_200 = 'requests_total{method="POST",route="/continue",status="200"}'


def per_worker_counts(metrics_dir: Path, sample: str, scratch: Path) -> dict[int, float]:
    """`sample` in each worker's own counter file (counter_<pid>.db), read one file at a time by
    prometheus-client's multiprocess collector, the one /metrics sums them with."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        alone = scratch / str(pid)
        alone.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[pid] = counter_value(generate_latest(registry).decode(), sample)
    return counts


def gunicorn_processes(make: subprocess.Popen) -> tuple[psutil.Process, list[psutil.Process]]:
    """(master, workers) of the gunicorn that `make api` started."""
    servers = [p for p in psutil.Process(make.pid).children(recursive=True) if "serving.main:app" in p.cmdline()]
    master = next(p for p in servers if p.ppid() not in {s.pid for s in servers})
    return master, master.children()


def test_make_api_serves_with_two_workers_and_metrics_count_both(tiny_registry, tmp_path):
    """`make api` on a real packaged model, WEB_CONCURRENCY=2: each worker answers some requests, and
    /metrics counts every one of them, summed from a folder that make created and removes at the end."""
    port = free_port()
    venv = VENV_BIN.parent
    env = {**os.environ, "MODEL_URI": str(tiny_registry["packages"]["1"]), "WEB_CONCURRENCY": "2",
           "REDIS_URL": "", "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO),
           # every request is counted: a busy machine must not get one shed (the admission tests test that)
           "QUEUE_TIMEOUT_MS": "60000", "QUEUE_TARGET_MS": "60000", "REQUEST_TIMEOUT_MS": "600000"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)          # make api chooses one
    log_path = tmp_path / "make-api.log"
    with log_path.open("w") as log:
        # -o: the venv is set up already; make must not reinstall it for a newer pyproject.toml
        make = subprocess.Popen(["make", "-o", f"{venv}/.installed", "api", f"VENV={venv}", f"API_PORT={port}"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        ready: set[str] = set()
        deadline = time.monotonic() + 120
        while len(ready) < 2 and time.monotonic() < deadline:
            assert make.poll() is None, log_path.read_text()[-3000:]
            try:
                health = httpx.get(f"{base}/healthz", timeout=2).json()
                if health["model_loaded"]:
                    ready.add(health["worker"])
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert len(ready) == 2, log_path.read_text()[-3000:]

        master, workers = gunicorn_processes(make)
        assert len(workers) == 2
        metrics_dir = Path(master.environ()["PROMETHEUS_MULTIPROC_DIR"])
        assert metrics_dir.parent == tmp_path and metrics_dir.name.startswith("playlistai-metrics")

        sent, counts = 0, {}
        # new connections until both workers have served some (the kernel picks the accepting worker)
        while sent < 400 and sum(1 for n in counts.values() if n > 0) < 2:
            for _ in range(10):
                response = httpx.post(f"{base}/continue", json={"tracks": ["t000001", "t000002"], "k": 5,
                                                                "context": {"hour": sent % 24, "dow": 3}}, timeout=10)
                assert response.status_code == 200, response.text
                sent += 1
            counts = per_worker_counts(metrics_dir, CONTINUE_200, tmp_path / "one-worker")
        served = {pid: n for pid, n in counts.items() if n > 0}
        assert set(served) == {w.pid for w in workers}, (counts, [w.pid for w in workers])
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert counter_value(metrics, CONTINUE_200) == sent == sum(served.values()), (served, metrics[:2000])
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(timeout=10)
    assert not list(tmp_path.glob("playlistai-metrics*")), "make api left its metrics folder behind"


def test_the_masters_worker_exit_hook_imports_nothing():
    """`child_exit` runs in the master's SIGCHLD handler: an import there, interrupted by the next
    worker's exit, leaves the module half initialised and the master dies (seen under load)."""
    import dis
    import runpy

    conf = runpy.run_path(str(REPO / "serving" / "gunicorn_conf.py"))
    assert not [i for i in dis.get_instructions(conf["child_exit"]) if i.opname in ("IMPORT_NAME", "IMPORT_FROM")]
