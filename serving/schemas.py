"""Request and response bodies of the HTTP API (docs/ARCHITECTURE.md, "HTTP API": fields are added,
never renamed)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints, field_validator

MAX_TRACKS = 500
MAX_TRACK_ID_CHARS = 256
MAX_K = 100_000          # the largest CAND_TOPK allowed; the route applies the configured CAND_TOPK

TrackId = Annotated[StrictStr, StringConstraints(max_length=MAX_TRACK_ID_CHARS)]


class ContinueContext(BaseModel):
    """The moment of the next play; a missing field takes the current time in TIMEZONE (UTC)."""

    model_config = ConfigDict(extra="forbid")     # a misspelt field is refused, not silently ignored
    hour: int | None = Field(None, ge=0, le=23, description="hour of day, 0..23")
    dow: int | None = Field(None, ge=0, le=6, description="day of week, Monday = 0 .. Sunday = 6")


class ContinueRequest(BaseModel):
    tracks: list[TrackId] = Field(
        ..., min_length=1, max_length=MAX_TRACKS,
        description="the playlist or session so far, oldest first; only the most recent MAX_SEQ_LEN are used",
    )
    k: int = Field(20, ge=1, le=MAX_K, description="how many tracks to return, 1..CAND_TOPK")
    context: ContinueContext | None = None
    use_ann: bool | None = Field(None, description="answer through the FAISS index; default USE_FAISS")
    exclude_seen: bool = Field(True, description="never return a track of the input")
    max_per_artist: int | None = Field(
        None, ge=0, description="at most this many tracks per artist; 0 or null = no cap (as in the pyfunc model)",
    )

    model_config = ConfigDict(
        extra="forbid",                           # `{"kk": 3}` is a 422 naming `kk`, not k=20 in silence
        json_schema_extra={
            "examples": [{"tracks": ["t123", "t456"], "k": 20, "context": {"hour": 21, "dow": 5}, "use_ann": False}]
        },
    )

    @field_validator("max_per_artist")
    @classmethod
    def _zero_is_no_cap(cls, value: int | None) -> int | None:
        return value or None


class ContinueItem(BaseModel):
    track_id: str
    score: float


class ContinueResponse(BaseModel):
    items: list[ContinueItem]
    model_version: str | None = Field(None, description="registry version of the model that answered")
    unknown_tracks: list[str] = Field(description="input ids not in the model's vocabulary (ignored)")
    fallback: bool = Field(description="true when no input track was known and popularity answered")
    cached: bool = Field(description="true when the response came from the cache")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    version: str = Field(description="PlayListAI version")
    model_loaded: bool
    cache_connected: bool = Field(description="false while Redis is unreachable and the in-process cache stands in")
    model_version: str | None
    model_alias: str
    model_uri: str = Field(description="the source the service follows")
    reason: str | None = Field(None, description="why no model is loaded, or why the last reload failed")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[FieldError] | None = None


class ReloadResponse(BaseModel):
    outcome: Literal["loaded", "unchanged", "failed"]
    model_version: str | None
    previous_version: str | None
    error: str | None = None
