"""The dependency the routes declare: the service's state (serving/state.py), built by the lifespan
on `app.state`.

One dependency rather than one per part, and `async def`: FastAPI runs a plain `def` dependency in
its thread pool, and each resolution costs a few microseconds, which a cached answer notices.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.state import ServiceState


async def get_service(request: Request) -> ServiceState:
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]
