"""Load shedding, deadlines and draining (serving/admission.py), in the app and behind the edge."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from serving.admission import DEADLINE, RECEIVED_AT, WORKER_TASKS, AdmissionMiddleware, LoopLagMonitor
from serving.lifecycle import LIFECYCLE
from serving.metrics import REQUESTS_SHED_TOTAL
from tests.serving.edge_helpers import edge_server


def middleware(app, **overrides) -> AdmissionMiddleware:
    options = dict(max_concurrent=4, queue_timeout_s=0.25, queue_target_s=0.02, request_timeout_s=2.0,
                   retry_after_s=1)
    options.update(overrides)
    return AdmissionMiddleware(app, **options)


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def call(asgi, path: str = "/continue", extensions: dict | None = None) -> tuple[int, dict, bytes]:
    """One request straight into an ASGI callable: (status, headers, body)."""
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b"",
             "extensions": dict(extensions or {})}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(asgi(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start.get("headers", [])}, body


def test_a_request_that_waited_past_the_queue_timeout_is_shed_with_retry_after():
    shed = REQUESTS_SHED_TOTAL.labels(reason="queue")._value.get()
    asgi = middleware(ok_app, retry_after_s=3)
    assert call(asgi, extensions={RECEIVED_AT: time.monotonic() - 0.1})[0] == 200       # 100 ms < 250 ms
    status, headers, body = call(asgi, extensions={RECEIVED_AT: time.monotonic() - 0.4})
    assert status == 503 and headers["retry-after"] == "3" and headers["content-type"] == "application/json"
    assert "waited" in json.loads(body)["detail"]
    assert REQUESTS_SHED_TOTAL.labels(reason="queue")._value.get() == shed + 1


def test_an_overloaded_worker_sheds_at_the_tighter_queue_target():
    asgi = middleware(ok_app)
    asgi.monitor.last_prompt = time.monotonic() - 1.0                 # the loop has had no pause for 1 s
    asgi.monitor.ensure_started = lambda: None
    assert asgi.monitor.overloaded()
    status, _, body = call(asgi, extensions={RECEIVED_AT: time.monotonic() - 0.05})   # 50 ms > 20 ms
    assert status == 503 and "overloaded" in json.loads(body)["detail"]
    assert call(asgi, extensions={RECEIVED_AT: time.monotonic()})[0] == 200


def test_more_requests_than_the_concurrency_limit_are_shed():
    asgi = middleware(ok_app, max_concurrent=3)
    queue = {object() for _ in range(3)}                              # three tasks: this one and two more
    assert call(asgi, extensions={WORKER_TASKS: queue})[0] == 200
    queue.add(object())
    status, headers, body = call(asgi, extensions={WORKER_TASKS: queue})
    assert status == 503 and "holds 4 requests (limit 3)" in json.loads(body)["detail"] and headers["retry-after"]


def test_without_the_edge_the_requests_inside_the_app_are_counted():
    release = asyncio.Event()

    async def waiting_app(scope, receive, send):
        await release.wait()
        await ok_app(scope, receive, send)

    asgi = middleware(waiting_app, max_concurrent=2)

    async def scenario():
        statuses = []

        async def one():
            sent = []
            scope = {"type": "http", "method": "POST", "path": "/continue", "headers": [], "query_string": b""}

            async def receive():
                return {"type": "http.request", "body": b""}

            async def send(message):
                sent.append(message)
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await asgi(scope, receive, send)

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*tasks)
        return sorted(statuses)

    assert asyncio.run(scenario()) == [200, 200, 503]


def test_operations_routes_are_never_shed():
    asgi = middleware(ok_app, max_concurrent=1)
    for path in ("/healthz", "/readyz", "/metrics", "/admin/reload"):
        assert call(asgi, path, {RECEIVED_AT: time.monotonic() - 30, WORKER_TASKS: set(range(100))})[0] == 200
    assert call(asgi, "/continue", {RECEIVED_AT: time.monotonic() - 30})[0] == 503


def test_an_admitted_request_gets_its_deadline():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope["extensions"])
        await ok_app(scope, receive, send)

    received = time.monotonic() - 0.01
    call(middleware(app, request_timeout_s=1.5), extensions={RECEIVED_AT: received})
    assert seen[DEADLINE] == pytest.approx(received + 1.5)


def test_the_loop_lag_monitor_sees_a_busy_loop():
    async def scenario():
        monitor = LoopLagMonitor(prompt_s=0.01)
        monitor.ensure_started()
        await asyncio.sleep(0.05)
        idle = monitor.overloaded()
        started = time.monotonic()
        while time.monotonic() - started < 0.3:        # the loop busy for 300 ms, without a pause
            time.sleep(0.01)  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0)
        return idle, monitor.overloaded(), monitor.last_lag_s

    idle, busy, lag = asyncio.run(scenario())
    assert not idle and busy, lag


# -- the app ----------------------------------------------------------------------------------------

def with_extensions(app, **delays):
    """The app, its requests stamped as the edge would: received `received_ago_s` ago."""
    async def stamped(scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("extensions", {})[RECEIVED_AT] = time.monotonic() - delays.get("received_ago_s", 0.0)
        await app(scope, receive, send)
    return stamped


@pytest.fixture
def stamped_client(make_settings, fake_registry):
    from serving.main import create_app

    clients = []

    def make(received_ago_s: float, **settings):
        app = create_app(make_settings(**settings), loader=fake_registry.load, alias_resolver=fake_registry.resolve)
        client = TestClient(with_extensions(app, received_ago_s=received_ago_s), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_continue_answers_504_when_its_deadline_passed_before_scoring(stamped_client, fake_registry):
    client = stamped_client(0.3, REQUEST_TIMEOUT_MS=200, QUEUE_TIMEOUT_MS=1000, QUEUE_TARGET_MS=50)
    calls = fake_registry.models["1"].calls
    response = client.post("/continue", json={"tracks": ["t1"], "k": 3})
    assert response.status_code == 504 and "deadline exceeded" in response.json()["detail"]
    assert fake_registry.models["1"].calls == calls, "a request past its deadline was scored"
    assert client.get("/healthz").status_code == 200


def test_continue_is_shed_with_503_and_retry_after_in_the_app(stamped_client):
    client = stamped_client(0.5, QUEUE_TIMEOUT_MS=250, QUEUE_TARGET_MS=50, RETRY_AFTER_S=2)
    response = client.post("/continue", json={"tracks": ["t1"], "k": 3})
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["detail"].startswith("overloaded")
    metrics = client.get("/metrics").text
    assert 'requests_total{method="POST",route="/continue",status="503"}' in metrics
    assert 'requests_shed_total{reason="queue"}' in metrics


def test_draining_readyz_503_and_every_answer_closes_its_connection(client):
    assert client.get("/readyz").status_code == 200
    LIFECYCLE.begin_drain("SIGTERM received")
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "draining" in ready.json()["detail"]
        health = client.get("/healthz")
        assert health.status_code == 200 and health.headers["connection"] == "close"
        answer = client.post("/continue", json={"tracks": ["t1"], "k": 3})
        assert answer.status_code == 200 and answer.headers["connection"] == "close"
    finally:
        LIFECYCLE.reset()
    assert client.get("/readyz").status_code == 200


# -- behind the edge: real queueing on one event loop --------------------------------------------------

def test_a_burst_beyond_what_the_worker_can_score_is_shed_and_the_rest_answered_in_time(make_settings, fake_registry):
    """40 requests at once on their own connections, each scored for 20 ms on the event loop (as the
    model does): those that would wait longer than the queue timeout get 503 at once, the others 200,
    and no answer takes much longer than the timeout plus one scoring."""
    from serving.main import create_app

    model = fake_registry.models["1"]
    recommend = model.recommend

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return recommend(*args, **kwargs)

    model.recommend = slow
    settings = make_settings(QUEUE_TIMEOUT_MS=150, QUEUE_TARGET_MS=40, CACHE_TTL_S=1)
    app = create_app(settings, loader=fake_registry.load, alias_resolver=fake_registry.resolve)
    results: list[tuple[int, float, str | None]] = []
    with edge_server(app, lifespan="on") as (port, _):
        barrier = threading.Barrier(40)

        def one(i: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            body = json.dumps({"tracks": [f"t{i}"], "k": 3})
            barrier.wait()
            started = time.monotonic()
            connection.request("POST", "/continue", body, {"content-type": "application/json"})
            response = connection.getresponse()
            response.read()
            results.append((response.status, time.monotonic() - started, response.getheader("retry-after")))
            connection.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    statuses = [status for status, _, _ in results]
    assert len(results) == 40 and set(statuses) <= {200, 503}, statuses
    assert 0 < statuses.count(200) < 40 and statuses.count(503) > 0, statuses
    assert all(retry == "1" for status, _, retry in results if status == 503)
    slowest_200 = max(took for status, took, _ in results if status == 200)
    assert slowest_200 < 0.15 + 0.02 + 0.25, slowest_200       # queue timeout + one scoring + slack


def test_the_edge_answers_probes_itself_with_what_the_routes_say(make_settings, fake_registry):
    """A plain GET of /healthz or /readyz is answered by the edge (serving/edge.py: answer_probe), as
    soon as its head is read, with the bytes the routes would send; one with a body goes to the app."""
    from serving.main import create_app
    from serving.metrics import REQUESTS_TOTAL

    app = create_app(make_settings(), loader=fake_registry.load, alias_resolver=fake_registry.resolve)
    with edge_server(app, lifespan="on") as (port, _):
        for path in ("/healthz", "/readyz"):
            counted = REQUESTS_TOTAL.labels(path, "GET", "200")._value.get()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path, headers={"content-length": "0"})     # a body: the app answers
            by_app = connection.getresponse()
            app_body = by_app.read()
            connection.request("GET", path)                                       # the same connection
            by_edge = connection.getresponse()
            assert by_edge.status == by_app.status == 200
            assert json.loads(by_edge.read()) == json.loads(app_body)
            # uvicorn dates its answers; the edge's own answer is written without one
            assert by_app.getheader("date") and by_edge.getheader("date") is None
            time.sleep(0.1)
            assert REQUESTS_TOTAL.labels(path, "GET", "200")._value.get() == counted + 2     # both counted
            connection.request("GET", path)                                       # kept alive
            assert connection.getresponse().status == 200
            connection.close()
        LIFECYCLE.begin_drain("test")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/readyz")
            draining = connection.getresponse()
            assert draining.status == 503 and "draining" in json.loads(draining.read())["detail"]
            assert draining.getheader("connection") == "close"
        finally:
            LIFECYCLE.reset()


# -- the scoring queue -------------------------------------------------------------------------------

def test_the_scoring_queue_scores_one_request_per_turn_of_the_loop_first_come_first_served():
    from serving.admission import ScoringQueue

    async def scenario():
        queue = ScoringQueue(queue_timeout_s=10, queue_target_s=10)
        events: list[str] = []

        async def request(name: str) -> None:
            async with queue.turn(time.monotonic()) as refusal:
                assert refusal is None
                events.append(f"{name} scores")
                time.sleep(0.01)  # noqa: ASYNC251 - the synchronous scoring this queue is for

        async def other_io() -> None:
            for i in range(3):
                events.append(f"io {i}")
                await asyncio.sleep(0)

        await asyncio.gather(request("a"), request("b"), request("c"), other_io())
        return events

    events = asyncio.run(scenario())
    scored = [e for e in events if e.endswith("scores")]
    assert scored == ["a scores", "b scores", "c scores"]
    # between two scorings the loop ran other work: they were not back to back in one turn
    between = events[events.index("a scores") + 1: events.index("b scores")]
    assert any(e.startswith("io") for e in between), events


def test_the_scoring_queue_refuses_at_its_turn_a_request_that_waited_too_long():
    from serving.admission import ScoringQueue

    async def scenario():
        queue = ScoringQueue(queue_timeout_s=0.05, queue_target_s=0.05)
        outcomes = []

        async def request(received: float) -> None:
            async with queue.turn(received) as refusal:
                outcomes.append(refusal)
                if refusal is None:
                    time.sleep(0.03)  # noqa: ASYNC251

        now = time.monotonic()
        await asyncio.gather(*(request(now) for _ in range(4)))
        return outcomes, len(queue)

    outcomes, left = asyncio.run(scenario())
    assert outcomes[0] is None and outcomes[1] is None          # 0 and 30 ms: within 50 ms
    assert all(o is not None and "waited" in o for o in outcomes[2:]), outcomes
    assert left == 0                                            # every turn was handed on


def test_a_standing_queue_is_overload():
    from serving.admission import OVERLOAD_WINDOW_S, ScoringQueue

    LIFECYCLE.model_loaded_at = 0.0                       # no model load just before (another test's)

    async def scenario():
        queue = ScoringQueue(queue_timeout_s=10, queue_target_s=10)
        seen = []

        async def request() -> None:
            async with queue.turn(time.monotonic()):
                seen.append(queue.overloaded())
                time.sleep(0.03)  # noqa: ASYNC251

        await asyncio.gather(*(request() for _ in range(int(OVERLOAD_WINDOW_S / 0.03) + 4)))
        return seen, queue.overloaded()

    seen, after = asyncio.run(scenario())
    assert not seen[0] and seen[-1] and not after, seen


def test_a_request_after_an_idle_spell_is_not_overload():
    """The standing queue is timed from when the queue last went from empty to busy: a lone request
    that arrives after seconds of quiet is not taken for a queue that stood all that time."""
    from serving.admission import OVERLOAD_WINDOW_S, ScoringQueue

    async def scenario():
        queue = ScoringQueue(queue_timeout_s=10, queue_target_s=10)
        queue.last_empty = time.monotonic() - 10 * OVERLOAD_WINDOW_S     # idle for a while
        async with queue.turn(time.monotonic()):
            return queue.overloaded()

    assert not asyncio.run(scenario())


def test_a_model_load_is_not_overload():
    from serving.admission import OVERLOAD_WINDOW_S, RELOAD_GRACE_S, ScoringQueue

    LIFECYCLE.model_loaded_at = 0.0                       # no model load just before (another test's)
    queue = ScoringQueue(queue_timeout_s=10, queue_target_s=10)
    queue._busy, queue.last_empty = True, time.monotonic() - 10 * OVERLOAD_WINDOW_S       # standing for long
    assert queue.overloaded()
    LIFECYCLE.model_loading = True
    try:
        assert not queue.overloaded()                     # the load slows the worker down: its own doing
    finally:
        LIFECYCLE.model_loading = False
    LIFECYCLE.model_loaded_at = time.monotonic()
    try:
        assert not queue.overloaded()                     # a window of grace after it
        assert not queue.overloaded(time.monotonic() + RELOAD_GRACE_S / 2)
        assert queue.overloaded(time.monotonic() + RELOAD_GRACE_S + OVERLOAD_WINDOW_S)
    finally:
        LIFECYCLE.model_loaded_at = 0.0


def test_a_request_waiting_its_turn_is_answered_by_the_model_swapped_in_meanwhile(make_settings, fake_registry):
    """The model is read at the request's turn to score, not before it waited: once a worker reports
    the new version, no answer of the old one follows (reliability scenario 3). Two requests at once:
    the first scores and, meanwhile, a swap is scheduled on the loop (as the poller's would land);
    the second, which came in while the old model served, waits for its turn and gets the new one."""
    import httpx

    from serving.main import create_app

    app = create_app(make_settings(QUEUE_TIMEOUT_MS=5000, QUEUE_TARGET_MS=5000), loader=fake_registry.load,
                     alias_resolver=fake_registry.resolve)
    old_model = fake_registry.models["1"]
    recommend = old_model.recommend

    def recommend_then_swap(*args, **kwargs):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:                              # the warm-up of the load, in a thread
            return recommend(*args, **kwargs)
        store = app.state.service.models
        new = type(store.current)(fake_registry.models["2"], "2", "ns-2")
        loop.call_soon(setattr, store, "current", new)
        return recommend(*args, **kwargs)

    old_model.recommend = recommend_then_swap

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                first, second = await asyncio.gather(
                    client.post("/continue", json={"tracks": ["t1"], "k": 3}),
                    client.post("/continue", json={"tracks": ["t2"], "k": 3}))
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        return first.json()["model_version"], second.json()["model_version"]

    assert asyncio.run(scenario()) == ("1", "2")
