"""POST /admin/reload: check the served alias now. Needs `Authorization: Bearer $ADMIN_TOKEN`;
without ADMIN_TOKEN configured the endpoint is disabled (404).

The token is compared in constant time (hmac.compare_digest), and every refused call is counted in
errors_total{route="/admin/reload", kind="http_401"|"http_403"}, so that guessing shows on a dashboard."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header

from serving.api.deps import ServiceDep
from serving.errors import error_response, public_text
from serving.metrics import ERRORS_TOTAL
from serving.schemas import ErrorResponse, ReloadResponse

router = APIRouter(prefix="/admin", tags=["operations"])
RELOAD_ROUTE = "/admin/reload"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def reload_model(service: ServiceDep, authorization: Annotated[str | None, Header()] = None):
    settings = service.settings
    expected = settings.ADMIN_TOKEN.get_secret_value() if settings.ADMIN_TOKEN else ""
    if not expected:
        return error_response(404, "admin endpoints are disabled: set ADMIN_TOKEN to enable them")
    provided = bearer_token(authorization)
    if provided is None:
        ERRORS_TOTAL.labels(route=RELOAD_ROUTE, kind="http_401").inc()
        return error_response(401, "missing bearer token: send Authorization: Bearer <ADMIN_TOKEN>",
                              headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(provided.encode(), expected.encode()):
        ERRORS_TOTAL.labels(route=RELOAD_ROUTE, kind="http_403").inc()
        return error_response(403, "invalid admin token")
    result = (await service.models.check()).as_dict()
    result["error"] = public_text(result["error"])
    return result
