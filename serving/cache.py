"""The response cache: Redis first, an in-process TTL cache whenever Redis is down or slow.

Redis calls run with a socket timeout of REDIS_TIMEOUT_MS (50 ms) and no retries. The first failure
of a call sends every later request to the in-process cache at once and starts one PING in a worker
thread (with the same timeout) that decides: Redis answers, and the cache goes back to Redis at once,
nothing logged (a call that missed its timeout on a busy CPU while Redis was fine: it used to mark
Redis down, flap `/healthz` and log a warning, hundreds of times an hour); or it does not, and the
cache is disconnected: `/healthz` says so, a warning is logged, and a background task pings Redis
with exponential back-off until it answers again. While connected, a watcher pings Redis every
HEALTH_CHECK_INTERVAL_S, so that a worker without traffic also knows when Redis is gone or too slow.

The calls on the request path are synchronous, on the event loop, by decision: a GET or SET to a
Redis nearby takes ~30 us, an asyncio client ~60-170 us (BENCHMARKS.md, README "Security"), and a
call that stalls costs at most REDIS_TIMEOUT_MS once, after which Redis is skipped until a PING
answers. The PINGs run in worker threads.

The in-process cache is bounded by bytes (LOCAL_CACHE_MAX_BYTES: keys, responses and the overhead
of each entry) as well as entries (LOCAL_CACHE_MAX_ITEMS): a response of k=500 weighs ~16 KB.

Keys cover everything the response depends on (model version, the whole input history, context,
k and flags), so a new model never serves a slate cached for the old one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections import OrderedDict

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serving.metrics import CACHE_CONNECTED, CACHE_ERRORS_TOTAL

log = logging.getLogger(__name__)

KEY_PREFIX = "playlistai:continue:v1:"
RECONNECT_FIRST_DELAY_S = 0.1
STARTUP_PINGS = 3                # PINGs at start before Redis is taken for down
RECONNECT_MAX_DELAY_S = 5.0
HEALTH_CHECK_INTERVAL_S = 1.0


def continue_cache_key(
    model_namespace: str,
    tracks: list[str],
    k: int,
    hour: int,
    dow: int,
    use_ann: bool,
    exclude_seen: bool,
    max_per_artist: int | None,
) -> str:
    """A short key over everything a /continue response depends on."""
    canonical = json.dumps(
        [model_namespace, tracks, k, hour, dow, use_ann, exclude_seen, max_per_artist],
        separators=(",", ":"), ensure_ascii=False,
    )
    digest = hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return KEY_PREFIX + digest


ENTRY_OVERHEAD_BYTES = 200     # the map's slot, the (expiry, value) tuple, the float: measured, rounded up


def entry_bytes(key: str, value: bytes) -> int:
    return sys.getsizeof(key) + sys.getsizeof(value) + ENTRY_OVERHEAD_BYTES


class InProcessTTLCache:
    """A map bounded by entries and by bytes, least recently used first out, whose entries expire
    after `ttl_s`. Used from the event loop thread only."""

    def __init__(self, ttl_s: float, max_items: int, max_bytes: int | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: bytes) -> None:
        size = entry_bytes(key, value)
        if self.max_bytes is not None and size > self.max_bytes:
            return                                   # larger than the whole cache: not kept
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + self.ttl_s, value)
        self.bytes += size
        while len(self._entries) > self.max_items or (self.max_bytes is not None and self.bytes > self.max_bytes):
            oldest, (_, old_value) = self._entries.popitem(last=False)
            self.bytes -= entry_bytes(oldest, old_value)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= entry_bytes(key, value)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


class ResponseCache:
    def __init__(
        self,
        redis_url: str | None,
        ttl_s: float,
        timeout_ms: float,
        local_max_items: int,
        local_max_bytes: int | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.local = InProcessTTLCache(ttl_s, local_max_items, local_max_bytes)
        self.redis_url = redis_url
        self.connected = False
        self.suspect = False        # a call failed: Redis is skipped until the confirming PING answers
        self.false_alarms = 0       # failed calls after which Redis answered the PING at once
        self._reconnect_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._confirm_task: asyncio.Task | None = None
        self._closed = False
        self._redis: redis.Redis | None = None
        self.timeout_ms = timeout_ms
        if redis_url:
            timeout_s = timeout_ms / 1000.0
            self._redis = redis.Redis.from_url(
                redis_url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        CACHE_CONNECTED.set(0)

    @property
    def redis_configured(self) -> bool:
        return self._redis is not None

    @property
    def backend(self) -> str:
        return "redis" if self.connected and not self.suspect else "local"

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect if Redis answers; otherwise serve from the in-process cache and keep trying."""
        if self._redis is None:
            log.info("REDIS_URL is empty: responses are cached in-process only")
            return
        # a worker starts while the others load their models: one PING that misses REDIS_TIMEOUT_MS on
        # the busy CPU is not Redis down, so the start gives it a few tries before it says so
        for attempt in range(STARTUP_PINGS):
            if await asyncio.to_thread(self._ping):
                self._mark_connected()
                break
            if attempt + 1 < STARTUP_PINGS:
                await asyncio.sleep(RECONNECT_FIRST_DELAY_S)
        else:
            log.warning("Redis at %s does not answer: caching in-process until it does", self._safe_url())
            self._schedule_reconnect()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_connection())

    async def close(self) -> None:
        self._closed = True
        for task in (self._reconnect_task, self._watch_task, self._confirm_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self._redis is not None:
            self._redis.close()

    # -- the request path ------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        if self.connected and not self.suspect:
            try:
                return self._redis.get(key)
            except redis.RedisError as exc:
                self._on_call_failure("get", exc)
        return self.local.get(key)

    def set(self, key: str, value: bytes) -> None:
        if self.connected and not self.suspect:
            try:
                self._redis.set(key, value, ex=max(1, int(self.ttl_s)))
                return
            except redis.RedisError as exc:
                self._on_call_failure("set", exc)
        self.local.set(key, value)

    # -- failure and recovery --------------------------------------------------------------------
    def _on_call_failure(self, operation: str, exc: Exception) -> None:
        """A call on the request path failed: skip Redis until one PING says whether it is down."""
        CACHE_ERRORS_TOTAL.labels(operation=operation).inc()
        if self.suspect or not self.connected:
            return
        self.suspect = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:       # outside the event loop (a test): decide at once
            self._on_redis_failure(operation, exc)
            return
        self._confirm_task = loop.create_task(self._confirm(operation, exc))

    async def _confirm(self, operation: str, exc: Exception) -> None:
        answered = await asyncio.to_thread(self._ping)
        self.suspect = False
        if self._closed or not self.connected:
            return
        if answered:
            self.false_alarms += 1
            log.debug("Redis %s failed (%s: %s) but Redis answers: back to Redis", operation,
                      type(exc).__name__, exc)
        else:
            self._on_redis_failure(operation, exc)

    def _on_redis_failure(self, operation: str, exc: Exception) -> None:
        """Redis is down or slower than REDIS_TIMEOUT_MS: in-process until a PING answers again."""
        if operation == "ping":    # a failed call was counted when it failed
            CACHE_ERRORS_TOTAL.labels(operation=operation).inc()
        if self.connected:
            log.warning("Redis %s failed (%s: %s) and a PING got no answer within %g ms: caching in-process "
                        "until Redis answers again", operation, type(exc).__name__, exc, self.timeout_ms)
        self.connected = False
        self.suspect = False
        CACHE_CONNECTED.set(0)
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._closed or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # called outside the event loop: the next request on it schedules it
            return
        self._reconnect_task = loop.create_task(self._reconnect_until_connected())

    async def _watch_connection(self) -> None:
        """While connected, ping every HEALTH_CHECK_INTERVAL_S; two PINGs in a row without an answer
        (the second at once) mark the cache disconnected."""
        while not self._closed:
            await asyncio.sleep(HEALTH_CHECK_INTERVAL_S)
            if not self.connected or self.suspect or await asyncio.to_thread(self._ping):
                continue
            if self.connected and not await asyncio.to_thread(self._ping) and self.connected:
                self._on_redis_failure("ping", redis.ConnectionError("no answer to PING within REDIS_TIMEOUT_MS"))

    async def _reconnect_until_connected(self) -> None:
        delay = RECONNECT_FIRST_DELAY_S
        while not self._closed:
            await asyncio.sleep(delay)
            if await asyncio.to_thread(self._ping):
                self._mark_connected()
                log.info("Redis at %s answers again: caching in Redis", self._safe_url())
                return
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    def _ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def _mark_connected(self) -> None:
        self.connected = True
        CACHE_CONNECTED.set(1)

    def _safe_url(self) -> str:
        """The URL without a password, for logs."""
        url = self.redis_url or ""
        if "@" in url:
            scheme, _, rest = url.partition("://")
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url
