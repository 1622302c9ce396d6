"""One Settings object for the whole product, read from the environment and `.env`.

Every key of `env.example` is a field here. Invalid values fail at start with a message that names
the key, so a typo in a deployment is caught before any work is done.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the key."""


MAX_WEB_CONCURRENCY = 64


def available_cpus() -> int:
    """Cores this process may run on: its affinity mask where the OS has one (taskset, a container's
    cpuset), else every core of the machine. A CPU quota (a Kubernetes CPU limit) is not seen here."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_web_concurrency() -> int:
    """One gunicorn worker per available core: a worker scores on one thread (TORCH_THREADS)."""
    return min(available_cpus(), MAX_WEB_CONCURRENCY)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # data
    DATA_DIR: str = "data"
    SESSION_GAP_MIN: float = Field(45, gt=0, description="minutes of silence that start a new session")
    MAX_SEQ_LEN: int = Field(50, ge=2, le=1000)
    VOCAB_MIN_FREQ: int = Field(5, ge=1)
    TIMEZONE: str = "UTC"

    # model and training
    MODEL_NAME: Literal["transformer", "sasrec", "gru4rec"] = "transformer"
    MODEL_D: int = Field(128, ge=8, le=4096)
    LOSS_LABEL_SMOOTH: float = Field(0.1, ge=0.0, lt=1.0)
    RAY_ADDRESS: str | None = None

    # tracking and registry
    MLFLOW_TRACKING_URI: str = "sqlite:///mlflow.db"
    MLFLOW_EXPERIMENT_NAME: str = "playlistai"
    MLFLOW_ARTIFACT_ROOT: str = "mlartifacts"
    REGISTERED_MODEL_NAME: str = Field("playlistai", min_length=1)
    MODEL_ALIAS: str = Field("production", min_length=1)

    # serving
    API_PORT: int = Field(8088, ge=1, le=65535)
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    USE_FAISS: bool = False
    CAND_TOPK: int = Field(500, ge=1, le=100_000, description="the largest k a request may ask for")
    ANN_CANDIDATES: int = Field(0, ge=0, le=100_000, description="FAISS candidates re-ranked exactly per ANN "
                                "request; 0 = 2k (4k with an artist cap)")
    API_HOST: str = "127.0.0.1"
    MODEL_URI: str | None = Field(None, description="serve this model URI or local path instead of the alias")
    MODEL_POLL_S: float = Field(30, gt=0, description="seconds between checks of the served alias")
    TRACKING_TIMEOUT_S: float = Field(10, gt=0, le=600, description="seconds one call of the API to the tracking "
                                      "store may take (its MLFLOW_HTTP_REQUEST_TIMEOUT unless that is set)")
    TRACKING_MAX_RETRIES: int = Field(1, ge=0, le=5, description="retries of one call of the API to the tracking "
                                      "store (its MLFLOW_HTTP_REQUEST_MAX_RETRIES unless that is set); the model "
                                      "poller retries on its own, with back-off")
    ADMIN_TOKEN: SecretStr | None = Field(None, description="bearer token of /admin/reload; unset disables it")
    CACHE_TTL_S: int = Field(300, ge=1)
    REDIS_TIMEOUT_MS: float = Field(50, gt=0, le=10_000, description="Redis socket timeout of one cache call "
                                    "before the in-process cache stands in (a PING then decides whether Redis is down)")
    LOCAL_CACHE_MAX_ITEMS: int = Field(10_000, ge=1)
    LOCAL_CACHE_MAX_BYTES: int = Field(32 * 2**20, ge=2**16, description="bytes the in-process cache of one worker "
                                       "may hold (keys, responses and their overhead); the oldest go first")
    MAX_REQUEST_BYTES: int = Field(1_048_576, ge=1024)
    WEB_CONCURRENCY: int = Field(default_factory=default_web_concurrency, ge=1, le=MAX_WEB_CONCURRENCY,
                                 description="gunicorn workers; unset = one per available core")

    # serving: the edge (serving/edge.py: what gunicorn's uvicorn workers enforce before the app runs)
    MAX_HEADER_BYTES: int = Field(16_384, ge=1024, le=1_048_576, description="request line and headers of one "
                                  "request, in bytes; more is refused with 431")
    MAX_HEADER_COUNT: int = Field(64, ge=8, le=1000, description="headers of one request; more is refused with 431")
    HEADER_TIMEOUT_S: float = Field(5, gt=0, le=300, description="seconds a client has to send a request's line and "
                                    "headers, from its first byte (or from the connection's start); then 408 and close")
    BODY_TIMEOUT_S: float = Field(10, gt=0, le=600, description="seconds a client has to send a request's body once "
                                  "its headers are in; then 408 and close")
    KEEPALIVE_TIMEOUT_S: float = Field(5, gt=0, le=300, description="seconds an idle kept-alive connection stays open")
    # serving: load shedding and deadlines (serving/admission.py), per worker
    MAX_CONCURRENT_REQUESTS: int = Field(64, ge=1, le=10_000, description="requests one worker holds at once, "
                                         "queued or running; more are refused at once with 503 and Retry-After")
    QUEUE_TIMEOUT_MS: float = Field(250, gt=0, le=60_000, description="longest a request may wait in a worker's "
                                    "queue before it is refused with 503, while the worker keeps up")
    QUEUE_TARGET_MS: float = Field(50, gt=0, le=60_000, description="longest a request may wait in a worker's queue "
                                   "while the worker is overloaded (its queue not empty for 100 ms on end)")
    REQUEST_TIMEOUT_MS: float = Field(2000, gt=0, le=600_000, description="deadline of one request from its arrival: "
                                      "a request not scored by then is answered 504 instead")
    RETRY_AFTER_S: int = Field(1, ge=1, le=3600, description="Retry-After of the 503s of a full or draining worker")
    # serving: start and stop
    MODEL_STARTUP_WAIT_S: float = Field(10, ge=0, le=600, description="seconds the start waits for the first model "
                                        "before the port opens (it then answers 503 on /continue and /readyz)")
    SHUTDOWN_DRAIN_S: float = Field(2, ge=0, le=300, description="after SIGTERM: seconds a worker keeps accepting and "
                                    "answering (with Connection: close) while /readyz says 503")
    SHUTDOWN_GRACE_S: float = Field(15, gt=0, le=600, description="after the drain: seconds the accepted requests "
                                    "have to finish before the worker exits anyway")
    TORCH_THREADS: int = Field(1, ge=0, le=256, description="inference threads per API worker; 0 = cores / workers")
    ITEM_TABLE_DTYPE: Literal["float32", "bfloat16"] = Field(
        "float32", description="how the API stores the item table of exact scoring: bfloat16 halves its memory and "
        "its scoring time on large catalogs, at about 0.4 % of score precision (scores stay float32)")

    # monitoring: live traffic features for drift, the drift job, and where it reports
    TRAFFIC_STREAM_KEY: str = Field("playlistai:traffic:v1", min_length=1, description="Redis stream of request features")
    TRAFFIC_STREAM_MAXLEN: int = Field(50_000, ge=100, description="rows the Redis stream keeps (approximate)")
    TRAFFIC_BUFFER_ROWS: int = Field(10_000, ge=10, description="rows kept in memory per worker while Redis is down")
    PUSHGATEWAY_URL: str = Field("http://127.0.0.1:9091", description="Prometheus Pushgateway of the drift job; empty = no push")
    DRIFT_STATE_KEY: str = Field("playlistai:drift:latest", min_length=1, description="Redis hash of the latest drift result")
    DRIFT_STATE_FILE: str = Field("outputs/drift/latest.json", description="the same result as a file, read when Redis is not configured")
    DRIFT_WINDOW: int = Field(1000, ge=1, description="latest requests the drift job compares with the training reference")
    DRIFT_MIN_SAMPLES: int = Field(200, ge=10, description="fewer current rows than this: not enough data, no test")
    DRIFT_P_VAL: float = Field(0.01, gt=0, lt=1, description="family-wise false-alarm rate of one drift run")

    @field_validator("QUEUE_TARGET_MS")
    @classmethod
    def _queue_target_within_timeout(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("QUEUE_TIMEOUT_MS")
        if timeout is not None and value > timeout:
            raise ValueError(f"must not exceed QUEUE_TIMEOUT_MS ({timeout:g})")
        return value

    @property
    def model_family(self) -> str:
        """`transformer` is the seed's name for SASRec."""
        return "sasrec" if self.MODEL_NAME in ("transformer", "sasrec") else self.MODEL_NAME


def load_settings(**overrides) -> Settings:
    """Build Settings, turning pydantic's validation error into one readable message per key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
