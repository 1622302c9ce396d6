"""Every error leaves the API as JSON with a `detail` that says what is wrong.

Bad input is a 4xx: 422 names the offending field (`tracks`, `context.hour`, ...), a body that is
not JSON is 400, an oversized body 413. An exception nobody expected is logged with its traceback,
counted in `errors_total{kind="internal"}`, and answered with a JSON 500 that leaks nothing.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.metrics import ERRORS_TOTAL

log = logging.getLogger(__name__)

FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"

# An absolute filesystem path (optionally as a file: or sqlite: URI) of two or more components: not
# one that follows a word, a dot, a colon or a slash (a URL's path, `models:/name`, a relative path).
_ABSOLUTE_PATH = re.compile(
    r"(?:(?P<scheme>\b(?:file:(?://)?|sqlite:///))|(?<![\w.:/~-]))"
    r"(?P<path>/(?:[^\s'\"(),;:<>/]+/)+[^\s'\"(),;:<>/]+/?)"
)


def public_text(text: str | None) -> str | None:
    """`text` fit for a response body: absolute paths (the artifact store's, the run folder's) cut
    to their last two components, `.../package/model.pt`. The logs keep the whole message."""
    if not text:
        return text

    def shorten(match: re.Match) -> str:
        path = match.group("path")
        parts = [p for p in path.split("/") if p]
        return (match.group("scheme") or "") + ".../" + "/".join(parts[-2:]) + ("/" if path.endswith("/") else "")

    return _ABSOLUTE_PATH.sub(shorten, text)


def error_response(status_code: int, detail: str, errors: list[dict] | None = None, headers=None) -> JSONResponse:
    body: dict = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status_code, headers=headers)


def _field_name(loc) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


MAX_ERRORS_LISTED = 20


def describe_validation_errors(errors) -> tuple[int, str, list[dict]]:
    """-> (status, one-line message, [{field, message}]) without echoing the (maybe huge) input, and
    with at most MAX_ERRORS_LISTED fields listed (the message counts the others)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (e.get("ctx") or {}).get("error", "JSON decode error")
        position = e["loc"][-1] if len(e.get("loc", ())) > 1 else "?"
        message = f"malformed JSON body: {reason} at position {position}"
        return 400, message, [{"field": "body", "message": message}]
    described = []
    for e in errors[:MAX_ERRORS_LISTED]:
        field = _field_name(e.get("loc", ()))
        if e.get("type") == "missing" and field == "body":
            message = "a JSON object body is required"
        elif e.get("type") in ("model_attributes_type", "dict_type") and field == "body":
            message = "the body must be a JSON object (send it with Content-Type: application/json)"
        elif e.get("type") == "extra_forbidden":
            message = "unknown field (the fields are listed at /docs)"
        else:
            message = e.get("msg", "invalid value")
        described.append({"field": field, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in described[:5])
    if len(errors) > 5:
        summary += f"; and {len(errors) - 5} more"
    return 422, summary, described


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    status, message, described = describe_validation_errors(exc.errors())
    ERRORS_TOTAL.labels(route=_route_of(request), kind="bad_json" if status == 400 else "validation").inc()
    return error_response(status, message, described)


def describe_unparsable_body(cause: BaseException | None) -> str:
    """Why a body that is not a JSON syntax error still could not be parsed (FastAPI's 400)."""
    if isinstance(cause, RecursionError):
        reason = "it is nested too deeply"
    elif isinstance(cause, UnicodeError):
        reason = "it is not UTF-8 text"
    elif isinstance(cause, ValueError) and "digits" in str(cause):
        reason = "a number in it has too many digits"
    else:
        reason = "it could not be parsed"
    return f"malformed JSON body: {reason}"


async def http_error_handler(request: Request, exc: HTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 400 and detail == FASTAPI_BODY_PARSE_ERROR:
        detail = describe_unparsable_body(exc.__cause__)
    if exc.status_code >= 400 and exc.status_code != 404:
        ERRORS_TOTAL.labels(route=_route_of(request), kind=f"http_{exc.status_code}").inc()
    return error_response(exc.status_code, str(detail), headers=getattr(exc, "headers", None))


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    ERRORS_TOTAL.labels(route=_route_of(request), kind="internal").inc()
    return error_response(500, "internal error: the request could not be answered; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
