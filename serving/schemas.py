"""Request and response bodies of the HTTP API (docs/ARCHITECTURE.md, "HTTP API": fields are added,
never renamed)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)

MAX_TRACKS = 500
MAX_TRACK_ID_CHARS = 256
MAX_K = 100_000          # the largest CAND_TOPK allowed; the route applies the configured CAND_TOPK
# The most `[ { , :` bytes a valid request body can hold (serving/middleware.py counts them before
# parsing): every character of every track id may be one of them, plus the request's own structure.
MAX_JSON_TOKENS = MAX_TRACKS * MAX_TRACK_ID_CHARS + 1024

TrackId = Annotated[StrictStr, StringConstraints(max_length=MAX_TRACK_ID_CHARS)]
# strict: `{"k": true}` or `{"k": "20"}` is a 422, not k=1 or k=20 in silence
StrictIntField = Annotated[int, Strict()]
StrictBoolField = Annotated[bool, Strict()]


MAX_OBJECT_KEYS = 64        # keys of one object of a request: its fields, and room for many misspelt ones


def _few_fields(data, limit: int = MAX_OBJECT_KEYS):
    """An object with thousands of unknown keys would get one error each (and an answer listing them
    all): refused as one error before the fields are looked at."""
    if isinstance(data, dict) and len(data) > limit:
        raise ValueError(f"{len(data)} fields, more than this object has (the fields are listed at /docs)")
    return data


class ContinueContext(BaseModel):
    """The moment of the next play; a missing field takes the current time in TIMEZONE (UTC)."""

    model_config = ConfigDict(extra="forbid")     # a misspelt field is refused, not silently ignored
    hour: StrictIntField | None = Field(None, ge=0, le=23, description="hour of day, 0..23")
    dow: StrictIntField | None = Field(None, ge=0, le=6, description="day of week, Monday = 0 .. Sunday = 6")

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data):
        return _few_fields(data)


class ContinueRequest(BaseModel):
    tracks: list[TrackId] = Field(
        ..., min_length=1, max_length=MAX_TRACKS,
        description="the playlist or session so far, oldest first; only the most recent MAX_SEQ_LEN are used",
    )
    k: StrictIntField = Field(20, ge=1, le=MAX_K, description="how many tracks to return, 1..CAND_TOPK")
    context: ContinueContext | None = None
    use_ann: StrictBoolField | None = Field(None, description="answer through the FAISS index; default USE_FAISS")
    exclude_seen: StrictBoolField = Field(True, description="never return a track of the input")
    max_per_artist: StrictIntField | None = Field(
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

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data):
        return _few_fields(data)


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
    worker: str = Field(description="which worker process answered (an id drawn at its start)")


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
