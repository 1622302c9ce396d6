"""GET /metrics: Prometheus text exposition (all workers in multiprocess mode).

Rendering reads the drift state from Redis and, in multiprocess mode, every worker's metric files:
it runs in a worker thread, so that a slow Redis or disk never stalls the requests on the event loop.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from serving.api.deps import ServiceDep
from serving.metrics import CONTENT_TYPE, render_latest

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    return Response(await asyncio.to_thread(render_latest, service.drift_state), media_type=CONTENT_TYPE)
