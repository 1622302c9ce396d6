"""What the API keeps of its traffic for drift monitoring, and the drift result it reports.

Per answered /continue request one compact feature row (the drift-feature schema of
playlistai/inference/features.py: history_len, hour, dow, unknown_share, mean_pop_pct, top_score)
goes to a capped Redis stream (`XADD ... MAXLEN ~ TRAFFIC_STREAM_MAXLEN`), which the drift job reads. Nothing else about the request or the listener
is kept: no track ids, no user, no address.

Rows are buffered in memory (a ring buffer of TRAFFIC_BUFFER_ROWS per worker) and written by a
background task once a second, so the request path never waits for Redis. While Redis is down or
not configured the ring buffer keeps the latest rows, oldest dropped first, and they are written
when Redis answers again.

At scrape time `/metrics` reports the drift job's latest result (drift_psi, drift_ks_p, ...), read
from the Redis hash DRIFT_STATE_KEY, or from DRIFT_STATE_FILE when Redis is not configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from playlistai.inference.features import DRIFT_STATE_FIELD, request_features
from serving import metrics

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
FLUSH_BATCH_ROWS = 2000
# off the request path: a little more patience than the cache's REDIS_TIMEOUT_MS
REDIS_TIMEOUT_S = 0.25


def feature_row(recommender, tracks: Sequence[str], hour: int, dow: int, top_score: float | None) -> dict:
    """The drift features of one request (playlistai.inference.features); missing values are left out."""
    drift_features = getattr(recommender, "drift_features", None)
    if drift_features is not None:
        return drift_features(tracks, hour, dow, top_score)
    return request_features(tracks, hour, dow, top_score)


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
                                retry=Retry(NoBackoff(), 0), health_check_interval=0)


class TrafficRecorder:
    def __init__(self, redis_url: str | None, stream_key: str, stream_maxlen: int, buffer_rows: int) -> None:
        self.stream_key = stream_key
        self.stream_maxlen = stream_maxlen
        self.buffer: deque[dict] = deque(maxlen=buffer_rows)
        self._redis = _redis_client(redis_url) if redis_url else None
        self._task: asyncio.Task | None = None
        self._redis_ok = True

    @classmethod
    def from_settings(cls, settings) -> TrafficRecorder:
        return cls(settings.REDIS_URL or None, settings.TRAFFIC_STREAM_KEY, settings.TRAFFIC_STREAM_MAXLEN,
                   settings.TRAFFIC_BUFFER_ROWS)

    def record(self, row: dict) -> None:
        self.buffer.append(row)

    def record_request(self, recommender, tracks: Sequence[str], hour: int, dow: int,
                       top_score: float | None) -> None:
        """One feature row per answered request; a failure here never fails the request."""
        try:
            self.record(feature_row(recommender, tracks, hour, dow, top_score))
        except Exception:
            log.exception("recording the request's drift features failed")
            metrics.ERRORS_TOTAL.labels(route="traffic", kind="feature_row").inc()

    async def start(self) -> None:
        if self._redis is not None:
            self._task = asyncio.create_task(self._flush_forever(), name="traffic-flush")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await asyncio.to_thread(self.flush)
        if self._redis is not None:
            self._redis.close()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:       # never let the writer die
                log.exception("writing traffic features failed unexpectedly")

    def flush(self) -> int:
        """Write the buffered rows to the stream; they leave the buffer only once Redis took them."""
        if self._redis is None or not self.buffer:
            return 0
        rows = [self.buffer[i] for i in range(min(len(self.buffer), FLUSH_BATCH_ROWS))]
        pipe = self._redis.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(self.stream_key, row, maxlen=self.stream_maxlen, approximate=True)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            if self._redis_ok:
                log.warning("Redis does not take traffic features (%s: %s): keeping the latest %d in memory",
                            type(exc).__name__, exc, self.buffer.maxlen)
            self._redis_ok = False
            metrics.ERRORS_TOTAL.labels(route="traffic", kind="redis_write").inc()
            return 0
        self._redis_ok = True
        for _ in rows:
            if self.buffer:
                self.buffer.popleft()
        return len(rows)


class DriftStateReader:
    """The drift job's latest result: the Redis hash when Redis is configured, else the file."""

    def __init__(self, redis_url: str | None, state_key: str, state_file: str) -> None:
        self.state_key = state_key
        self.state_file = Path(state_file)
        self._redis = _redis_client(redis_url) if redis_url else None

    @classmethod
    def from_settings(cls, settings) -> DriftStateReader:
        return cls(settings.REDIS_URL or None, settings.DRIFT_STATE_KEY, settings.DRIFT_STATE_FILE)

    def __call__(self) -> dict | None:
        try:
            if self._redis is not None:
                raw = self._redis.hget(self.state_key, DRIFT_STATE_FIELD)
            else:
                raw = self.state_file.read_bytes() if self.state_file.is_file() else None
            return json.loads(raw) if raw else None
        except (redis.RedisError, OSError, ValueError) as exc:
            log.debug("no drift state: %s", exc)
            return None

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
