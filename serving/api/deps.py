"""The dependency the routes declare: the service's state, built by the lifespan on `app.state`.

One dependency rather than three, and `async def`: FastAPI runs a plain `def` dependency in its
thread pool, and each resolution costs a few microseconds, which a cached answer notices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from playlistai.config import Settings
from serving.admission import ScoringQueue
from serving.cache import ResponseCache
from serving.model_store import ModelStore


@dataclass(frozen=True)
class Service:
    settings: Settings
    models: ModelStore
    cache: ResponseCache
    scoring: ScoringQueue | None = None      # the worker's queue of requests waiting to score


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
