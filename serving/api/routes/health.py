"""GET /healthz (liveness: always 200, says what works) and GET /readyz (503 until a model serves, and
from SIGTERM on while the worker drains).

Neither is ever shed (serving/admission.py), and both answer from memory: no call to the model, the
cache or the tracking store, so that an overloaded or disconnected worker still answers its probes.
Behind the edge (serving/edge.py) a plain GET of either is answered by the edge itself, with the
same bytes (`probe_answers`), as soon as its head is read: not behind the requests queued before it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

import playlistai
from serving.api.deps import ServiceDep
from serving.errors import public_text
from serving.lifecycle import LIFECYCLE, worker_id
from serving.schemas import ErrorResponse, HealthResponse
from serving.state import ServiceState

router = APIRouter(tags=["operations"])


def health_of(service: ServiceState) -> dict:
    settings, store, cache = service.settings, service.models, service.cache
    served = store.current
    if served is None:
        status = "unavailable"
    elif store.last_error or (cache.redis_configured and not cache.connected):
        status = "degraded"
    else:
        status = "ok"
    return {
        "status": status,
        "version": playlistai.__version__,
        "model_loaded": served is not None,
        "cache_connected": cache.connected,
        "model_version": served.version if served else None,
        "model_alias": store.alias_label or settings.MODEL_ALIAS,
        "model_uri": store.source.uri,
        "reason": public_text(store.reason_unavailable or store.last_error),
        "worker": worker_id(),
    }


def readiness_of(service: ServiceState) -> tuple[int, dict]:
    if LIFECYCLE.draining:
        return 503, {"detail": f"not ready: {LIFECYCLE.describe()}"}
    if service.models.current is None:
        return 503, {"detail": f"not ready: {public_text(service.models.reason_unavailable)}"}
    return 200, health_of(service)


def _json(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def probe_answers(service: ServiceState) -> dict[str, Callable[[], tuple[int, bytes]]]:
    """path -> () -> (status, JSON body): what the edge answers to a probe without the app."""

    def healthz() -> tuple[int, bytes]:
        return 200, _json(health_of(service))

    def readyz() -> tuple[int, bytes]:
        status, payload = readiness_of(service)
        return status, _json(payload)

    return {"/healthz": healthz, "/readyz": readyz}


@router.get("/healthz", response_model=HealthResponse)
async def healthz(service: ServiceDep) -> dict:
    return health_of(service)


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
async def readyz(service: ServiceDep):
    status, payload = readiness_of(service)
    return payload if status == 200 else JSONResponse(payload, status_code=status)
