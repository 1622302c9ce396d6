"""GET /metrics: Prometheus text exposition (all workers in multiprocess mode)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.metrics import CONTENT_TYPE, render_latest

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    return Response(render_latest(), media_type=CONTENT_TYPE)
