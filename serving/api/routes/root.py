"""GET /: what the service is and where its documentation is, instead of a bare 404."""

from __future__ import annotations

from fastapi import APIRouter

import playlistai

router = APIRouter(tags=["operations"])


@router.get("/", summary="Where the documentation is")
async def root() -> dict:
    return {
        "service": "PlayListAI",
        "version": playlistai.__version__,
        "docs": "/docs",
        "openapi": "/openapi.json",
        "endpoints": ["POST /continue", "GET /healthz", "GET /readyz", "GET /metrics"],
    }
