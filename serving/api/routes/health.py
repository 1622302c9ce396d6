"""GET /healthz (liveness: always 200, says what works) and GET /readyz (503 until a model serves)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

import playlistai
from serving.api.deps import Service, ServiceDep
from serving.schemas import ErrorResponse, HealthResponse

router = APIRouter(tags=["operations"])


def health_of(service: Service) -> dict:
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
        "reason": store.reason_unavailable or store.last_error,
    }


@router.get("/healthz", response_model=HealthResponse)
async def healthz(service: ServiceDep) -> dict:
    return health_of(service)


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
async def readyz(service: ServiceDep):
    if service.models.current is None:
        return JSONResponse({"detail": f"not ready: {service.models.reason_unavailable}"}, status_code=503)
    return health_of(service)
