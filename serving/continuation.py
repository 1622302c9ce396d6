"""What /continue does between a validated request and the response bytes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo

from serving.schemas import ContinueContext

NOT_CACHED_TAIL = b',"cached":false}'
CACHED_TAIL = b',"cached":true}'


def resolve_context(context: ContinueContext | None, timezone: str) -> tuple[int, int]:
    """(hour, dow) of the request; what it leaves out is the current time in `timezone`."""
    hour = context.hour if context is not None else None
    dow = context.dow if context is not None else None
    if hour is None or dow is None:
        now = datetime.now(ZoneInfo(timezone))
        hour = now.hour if hour is None else hour
        dow = now.weekday() if dow is None else dow
    return hour, dow


def _finite(score: float) -> float:
    score = float(score)
    return score if math.isfinite(score) else 0.0


def render_continue_body(recommendation, model_version: str | None) -> bytes:
    """The response JSON, `cached` last so that a cache hit flips it without parsing the body."""
    payload = {
        "items": [{"track_id": track_id, "score": _finite(score)} for track_id, score in recommendation.items],
        "model_version": model_version,
        "unknown_tracks": list(recommendation.unknown_tracks),
        "fallback": bool(recommendation.fallback),
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()[:-1] + NOT_CACHED_TAIL


def mark_cached(body: bytes) -> bytes:
    if body.endswith(NOT_CACHED_TAIL):
        return body[: -len(NOT_CACHED_TAIL)] + CACHED_TAIL
    return body
