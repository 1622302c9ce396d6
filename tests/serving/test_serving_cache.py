"""The response cache: keys, the in-process TTL cache, and a real Redis that dies and comes back."""

from __future__ import annotations

import time

import pytest

from serving.cache import InProcessTTLCache, continue_cache_key

REQUEST = {"tracks": ["t1", "t2", "t3"], "k": 5, "context": {"hour": 20, "dow": 4}}


def wait_for(condition, timeout_s: float, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def test_the_key_covers_every_input_of_the_response():
    base = dict(model_namespace="m/1", tracks=["a", "b"], k=5, hour=3, dow=4, use_ann=False,
                exclude_seen=True, max_per_artist=None)
    key = continue_cache_key(**base)
    assert key == continue_cache_key(**base)
    variants = [{"model_namespace": "m/2"}, {"tracks": ["b", "a"]}, {"tracks": ["a", "b", "c"]}, {"k": 6},
                {"hour": 4}, {"dow": 5}, {"use_ann": True}, {"exclude_seen": False}, {"max_per_artist": 2}]
    keys = {continue_cache_key(**{**base, **change}) for change in variants}
    assert key not in keys and len(keys) == len(variants)
    assert continue_cache_key(**{**base, "tracks": ["\ud800", "é"]})     # any string hashes


def test_in_process_cache_expires_and_stays_bounded(monkeypatch):
    import serving.cache as cache_module

    now = [1000.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: now[0])
    cache = InProcessTTLCache(ttl_s=10, max_items=3)
    cache.set("a", b"1")
    assert cache.get("a") == b"1"
    now[0] += 11
    assert cache.get("a") is None
    for key in "bcde":
        cache.set(key, key.encode())
    assert len(cache) == 3 and cache.get("b") is None and cache.get("e") == b"e"


def local_hits(client) -> float:
    """cache_hits_total{backend="local"}: counters are per process, so tests compare before and after."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('cache_hits_total{backend="local"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_without_redis_the_in_process_cache_answers(client):
    before = local_hits(client)
    assert client.post("/continue", json=REQUEST).json()["cached"] is False
    assert client.post("/continue", json=REQUEST).json()["cached"] is True
    assert client.get("/healthz").json()["cache_connected"] is False
    assert local_hits(client) == before + 1


@pytest.mark.integration
def test_redis_hits_outage_and_reconnection(make_client, redis_process, fake_registry):
    import redis

    # a generous timeout: on a loaded CI machine a 5 ms one can pass now and then, which is the
    # fallback working, but not what this test is about (a stopped Redis refuses at once)
    client = make_client(REDIS_URL=redis_process.url, REDIS_TIMEOUT_MS=500)
    direct = redis.Redis.from_url(redis_process.url)
    assert client.get("/healthz").json()["cache_connected"] is True

    first = client.post("/continue", json=REQUEST).json()
    second = client.post("/continue", json=REQUEST).json()
    assert first["cached"] is False and second["cached"] is True and first["items"] == second["items"]
    keys = direct.keys("playlistai:continue:*")
    assert len(keys) == 1 and 0 < direct.ttl(keys[0]) <= 300
    calls = fake_registry.models["1"].calls

    # Redis dies: every request still succeeds, through the in-process cache, without stalling
    redis_process.stop()
    started = time.perf_counter()
    for hour in range(24):
        response = client.post("/continue", json={**REQUEST, "context": {"hour": hour, "dow": 1}})
        assert response.status_code == 200
    assert time.perf_counter() - started < 3.0     # no request waits on the dead Redis
    health = client.get("/healthz").json()
    assert health["cache_connected"] is False and health["status"] == "degraded"
    assert client.post("/continue", json={**REQUEST, "context": {"hour": 5, "dow": 1}}).json()["cached"] is True
    assert "cache_connected 0.0" in client.get("/metrics").text

    # Redis comes back (empty): the service reconnects by itself and caches there again
    redis_process.start()
    assert wait_for(lambda: client.get("/healthz").json()["cache_connected"], timeout_s=10)
    assert client.get("/healthz").json()["status"] == "ok"
    request = {**REQUEST, "k": 9}
    assert client.post("/continue", json=request).json()["cached"] is False
    assert client.post("/continue", json=request).json()["cached"] is True
    assert direct.keys("playlistai:continue:*")
    assert fake_registry.models["1"].calls > calls
    direct.close()


@pytest.mark.integration
def test_a_redis_that_never_answers_costs_one_timeout(make_client):
    """A port that accepts nothing: startup and requests go on at once with the in-process cache."""
    import socket

    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)               # accepts the TCP handshake, never answers
        port = blackhole.getsockname()[1]
        client = make_client(REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_TIMEOUT_MS=20)
        started = time.perf_counter()
        for _ in range(20):
            assert client.post("/continue", json=REQUEST).status_code == 200
        assert time.perf_counter() - started < 2.0     # one 20 ms timeout, then in-process
        assert client.get("/healthz").json()["cache_connected"] is False


@pytest.mark.integration
def test_a_worker_without_traffic_notices_that_redis_is_gone(make_client, redis_process):
    """/healthz follows Redis even when no request touched the cache: the watcher pings it."""
    import time

    client = make_client(REDIS_URL=redis_process.url)
    assert client.get("/healthz").json()["cache_connected"] is True
    redis_process.stop()
    deadline = time.monotonic() + 5
    while client.get("/healthz").json()["cache_connected"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/healthz").json()["cache_connected"] is False
    redis_process.start()
    deadline = time.monotonic() + 10
    while not client.get("/healthz").json()["cache_connected"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/healthz").json()["cache_connected"] is True


def test_a_ping_missed_at_start_is_not_taken_for_redis_down():
    """A worker starts while its siblings load models: the first PING may miss its timeout on the busy
    CPU. The start tries again before it calls Redis down."""
    import asyncio

    import redis

    from serving.cache import ResponseCache

    class FlakyRedis:
        def __init__(self, misses: int) -> None:
            self.misses = misses

        def ping(self) -> bool:
            if self.misses:
                self.misses -= 1
                raise redis.TimeoutError("Timeout reading from socket")
            return True

        def close(self) -> None:
            pass

    async def start(misses: int) -> bool:
        cache = ResponseCache("redis://127.0.0.1:1/0", ttl_s=60, timeout_ms=50, local_max_items=10)
        cache._redis = FlakyRedis(misses)
        await cache.start()
        connected = cache.connected
        await cache.close()
        return connected

    assert asyncio.run(start(misses=1))
    assert not asyncio.run(start(misses=10))       # Redis that never answers is still found out at start
