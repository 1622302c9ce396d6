"""The edge (serving/edge.py) on a real socket: header limits, read timeouts, JSON protocol errors,
the scope stamps the admission needs, and the drain on SIGTERM. Each limit is tested just under and
just over, with the small limits of tests/serving/edge_helpers.py (4 KiB, 20 headers, 0.6 s)."""

from __future__ import annotations

import http.client
import signal
import threading
import time

import pytest

from serving.admission import RECEIVED_AT, WORKER_TASKS
from serving.lifecycle import LIFECYCLE
from tests.serving.edge_helpers import LIMITS, answer, connect, echo_app, edge_server, read_all, request_bytes

SLACK_S = 0.6


@pytest.fixture
def echo():
    with edge_server(echo_app) as (port, server):
        yield port


def exchange(port: int, raw: bytes, timeout_s: float = 5.0):
    sock = connect(port)
    try:
        sock.sendall(raw)
        data, how, took = read_all(sock, timeout_s)
    finally:
        sock.close()
    return answer(data), how, took


def test_headers_up_to_the_size_limit_pass_and_one_byte_more_is_a_json_431(echo):
    base = len(request_bytes("/", headers={"X-Pad": "", "Connection": "close"}))
    fits = request_bytes("/", headers={"X-Pad": "a" * (LIMITS.max_header_bytes - base), "Connection": "close"})
    assert len(fits) == LIMITS.max_header_bytes
    (status, _, body), _, _ = exchange(echo, fits)
    assert status == 200, body
    over = request_bytes("/", headers={"X-Pad": "a" * (LIMITS.max_header_bytes - base + 1), "Connection": "close"})
    (status, headers, body), how, took = exchange(echo, over)
    assert status == 431 and headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert "request headers too large" in body["detail"] and str(LIMITS.max_header_bytes) in body["detail"]
    assert how == "closed" and took < 2.5


def test_a_giant_header_is_refused_after_the_limit_not_read_to_its_end(echo):
    sock = connect(echo)
    started = time.monotonic()
    sent = 0
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Giant: ")
        for _ in range(16 * 64):                  # up to 64 MB; the server stops reading long before
            sock.sendall(b"a" * 65536)
            sent += 65536
    except OSError:
        pass
    data, how, _ = read_all(sock, 5)
    sock.close()
    assert sent < 8 * 2**20, f"the server read {sent} bytes of one header"
    assert time.monotonic() - started < 5
    assert answer(data)[0] in (431, 0)            # a reset may come before the answer is read


def test_more_headers_than_the_count_limit_is_a_json_431(echo):
    fits = request_bytes("/", headers={f"X-H{i}": "v" for i in range(LIMITS.max_header_count - 2)} |
                         {"Connection": "close"})
    assert exchange(echo, fits)[0][0] == 200
    over = request_bytes("/", headers={f"X-H{i}": "v" for i in range(LIMITS.max_header_count + 1)})
    (status, _, body), how, _ = exchange(echo, over)
    assert status == 431 and str(LIMITS.max_header_count) in body["detail"] and how == "closed"


def test_a_request_line_that_is_not_http_is_a_json_400(echo):
    (status, headers, body), how, _ = exchange(echo, b"HELLO THERE\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["detail"].startswith("malformed HTTP request") and how == "closed"


def test_a_slow_head_gets_a_json_408_within_the_header_timeout(echo):
    sock = connect(echo)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")        # never finished
    data, how, took = read_all(sock, 5)
    sock.close()
    status, _, body = answer(data)
    assert status == 408 and "headers not received" in body["detail"]
    assert how == "closed" and took < LIMITS.header_timeout_s + SLACK_S


def test_a_slowloris_dripping_bytes_does_not_extend_the_header_timeout(echo):
    sock = connect(echo)
    started = time.monotonic()

    def drip():
        for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa":
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.05)

    threading.Thread(target=drip, daemon=True).start()
    data, how, _ = read_all(sock, 5)
    took = time.monotonic() - started
    sock.close()
    assert answer(data)[0] == 408 and took < LIMITS.header_timeout_s + SLACK_S


def test_an_idle_connection_is_closed_without_an_answer(echo):
    sock = connect(echo)
    data, how, took = read_all(sock, 5)
    sock.close()
    assert data == b"" and how == "closed" and took < LIMITS.header_timeout_s + SLACK_S


def test_a_half_sent_body_gets_a_json_408_within_the_body_timeout(echo):
    sock = connect(echo)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"tracks\"")
    data, how, took = read_all(sock, 5)
    sock.close()
    status, _, body = answer(data)
    assert status == 408 and "body not received" in body["detail"]
    assert how == "closed" and took < LIMITS.body_timeout_s + SLACK_S


def test_a_kept_alive_connection_serves_several_requests_then_closes_when_idle(echo):
    connection = http.client.HTTPConnection("127.0.0.1", echo, timeout=5)
    for _ in range(3):
        connection.request("GET", "/again")
        response = connection.getresponse()
        assert response.status == 200 and response.read()
        time.sleep(LIMITS.keepalive_timeout_s / 3)        # under the idle limit: still open
    sock = connection.sock                                 # the same socket served all three
    data, how, took = read_all(sock, 5)
    connection.close()
    assert data == b"" and how == "closed" and took < LIMITS.keepalive_timeout_s + SLACK_S


def test_each_request_carries_its_arrival_time_and_the_worker_queue(echo):
    (status, _, body), _, _ = exchange(echo, request_bytes("/", headers={"Connection": "close"}))
    assert status == 200 and RECEIVED_AT in body["extensions"] and WORKER_TASKS in body["extensions"]


def test_sigterm_drains_then_lets_accepted_requests_finish(monkeypatch):
    with edge_server(echo_app) as (port, server):
        slow = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        slow.request("GET", "/slow", headers={"x-sleep": "1.2"})
        time.sleep(0.1)
        server.handle_exit(signal.SIGTERM, None)          # what the signal handler calls
        assert LIFECYCLE.draining
        # during the drain: still answered, each answer closing its connection
        during = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        during.request("GET", "/during")
        response = during.getresponse()
        assert response.status == 200 and response.getheader("connection") == "close"
        assert b'"draining": true' in response.read()
        # the request accepted before the signal finishes, although the drain ended meanwhile
        response = slow.getresponse()
        assert response.status == 200 and b'"/slow"' in response.read()
        deadline = time.monotonic() + LIMITS.drain_s + LIMITS.grace_s + 2
        while server.started and not server.should_exit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.should_exit, "the server did not stop after the drain"


@pytest.mark.integration
def test_python_dash_m_serving_runs_the_app_behind_the_edge(tmp_path):
    """`python -m serving`: one process, the same edge as under gunicorn, and a graceful SIGTERM."""
    import os
    import subprocess
    import sys

    from reliability.components import free_port

    port = free_port()
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port), "REDIS_URL": "",
           "MODEL_URI": str(tmp_path / "no-model"), "SHUTDOWN_DRAIN_S": "0.5", "PYTHONPATH": "."}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "serving.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "serving"], cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "serving.log").read_text()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/healthz")
                health = connection.getresponse()
                assert health.status == 200 and b'"model_loaded":false' in health.read()
                break
            except OSError:
                time.sleep(0.2)
        (status, _, body), _, _ = exchange(port, request_bytes("/healthz", headers={"X-Pad": "a" * 20_000}))
        assert status == 431 and "request headers too large" in body["detail"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
        assert "SIGTERM: /readyz answers 503" in (tmp_path / "serving.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


class Overloaded:
    def overloaded(self, now=None) -> bool:
        return True


def test_an_overloaded_worker_with_a_queue_sheds_at_the_edge_and_keeps_the_connection(echo):
    from serving.edge import EARLY_SHED_QUEUE

    LIFECYCLE.load_monitor = Overloaded()
    slow = [http.client.HTTPConnection("127.0.0.1", echo, timeout=10) for _ in range(EARLY_SHED_QUEUE)]
    try:
        for connection in slow:
            connection.request("GET", "/slow", headers={"x-sleep": "1.0"})
        time.sleep(0.3)                                   # eight requests held by the worker
        probe = http.client.HTTPConnection("127.0.0.1", echo, timeout=10)
        probe.request("POST", "/continue", body=b'{"tracks": ["t1"]}', headers={"content-type": "application/json"})
        shed = probe.getresponse()
        assert shed.status == 503 and shed.getheader("retry-after") == str(LIMITS.retry_after_s)
        assert b"overloaded" in shed.read() and shed.getheader("connection") != "close"
        probe.request("GET", "/healthz")                  # never shed, on the same connection
        health = probe.getresponse()
        assert health.status == 200 and b'"/healthz"' in health.read()
        for connection in slow:
            assert connection.getresponse().status == 200
        LIFECYCLE.load_monitor = None
        after = http.client.HTTPConnection("127.0.0.1", echo, timeout=10)     # the queue is gone: served
        after.request("POST", "/continue", body=b'{"tracks": ["t1"]}')
        assert after.getresponse().status == 200
    finally:
        LIFECYCLE.load_monitor = None
        for connection in slow:
            connection.close()
