"""One Settings object for the whole product, read from the environment and `.env`.

Every key of `env.example` is a field here. Invalid values fail at start with a message that names
the key, so a typo in a deployment is caught before any work is done.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the key."""


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
    MODEL_D: int = Field(256, ge=8, le=4096)
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
    CAND_TOPK: int = Field(500, ge=1, le=100_000)

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
