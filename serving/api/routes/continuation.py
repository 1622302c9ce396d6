"""POST /continue: the next k tracks of a playlist."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from serving.admission import deadline_passed, received_at, shed_response
from serving.api.deps import ServiceDep
from serving.cache import continue_cache_key
from serving.continuation import mark_cached, render_continue_body, resolve_context
from serving.errors import error_response, public_text
from serving.metrics import (
    ANN_MS,
    CACHE_HITS_TOTAL,
    CACHE_MISSES_TOTAL,
    CACHE_WINDOW,
    ERRORS_TOTAL,
    FALLBACK_TOTAL,
    MODEL_FORWARD_MS,
    UNKNOWN_TRACKS_TOTAL,
)
from serving.model_store import ServedModel
from serving.schemas import ContinueRequest, ContinueResponse, ErrorResponse
from serving.state import ServiceState

router = APIRouter(tags=["recommendations"])

JSON = "application/json"


@router.post(
    "/continue",
    response_model=ContinueResponse,
    responses={
        400: {"model": ErrorResponse, "description": "the body is not JSON"},
        413: {"model": ErrorResponse, "description": "the body is over the size limit"},
        422: {"model": ErrorResponse, "description": "a field is invalid; `detail` names it"},
        503: {"model": ErrorResponse, "description": "no model is loaded yet, or the worker is overloaded "
              "(then with Retry-After)"},
        504: {"model": ErrorResponse, "description": "the request's deadline (REQUEST_TIMEOUT_MS) passed before it "
              "was scored"},
    },
)
async def continue_playlist(request: ContinueRequest, service: ServiceDep, http: Request) -> Response:
    settings, store = service.settings, service.models
    served = store.current          # read once: a reload swapping models mid-request cannot mix them
    if served is None:
        return error_response(503, f"no model is loaded: {public_text(store.reason_unavailable)}")
    if request.k > settings.CAND_TOPK:
        raise RequestValidationError([{
            "type": "less_than_equal", "loc": ("body", "k"),
            "msg": f"Input should be less than or equal to {settings.CAND_TOPK} (CAND_TOPK)",
        }])

    if service.scoring is None:
        return _answer(request, service, served, http)
    # one request at a time scores on the event loop (serving/admission.py, ScoringQueue)
    async with service.scoring.turn(received_at(http.scope)) as refusal:
        if refusal is not None:
            return shed_response(http.scope, refusal, settings.RETRY_AFTER_S)
        # read again at its turn: a model swapped in while it waited answers it (the workers report
        # the new version on /healthz from the swap on, and no answer of the old may follow)
        return _answer(request, service, store.current or served, http)


def _answer(request: ContinueRequest, service: ServiceState, served: ServedModel, http: Request) -> Response:
    settings, cache = service.settings, service.cache
    hour, dow = resolve_context(request.context, settings.TIMEZONE)
    use_ann = settings.USE_FAISS if request.use_ann is None else request.use_ann
    key = continue_cache_key(served.cache_namespace, request.tracks, request.k, hour, dow, use_ann,
                             request.exclude_seen, request.max_per_artist)
    backend = cache.backend
    body = cache.get(key)
    CACHE_WINDOW.observe(body is not None)
    if body is not None:
        CACHE_HITS_TOTAL.labels(backend).inc()
        service.traffic.record_request(served.recommender, request.tracks, hour, dow, top_score=None)
        return Response(mark_cached(body), media_type=JSON)
    CACHE_MISSES_TOTAL.labels(backend).inc()
    if deadline_passed(http.scope):      # a slow body or a stall: the client has given up by now
        ERRORS_TOTAL.labels(route="/continue", kind="http_504").inc()
        return error_response(504, f"deadline exceeded: the request was not scored within {settings.REQUEST_TIMEOUT_MS:g} "
                                   "ms of its arrival (REQUEST_TIMEOUT_MS)")

    # CPU-bound for a few ms: scored on the event loop, where a thread hand-off would cost more
    # than it frees (the GIL); several workers (WEB_CONCURRENCY) scale it across cores.
    started = time.perf_counter()
    recommendation = served.recommender.recommend(
        request.tracks, request.k, hour, dow,
        use_ann=use_ann, exclude_seen=request.exclude_seen,
        max_per_artist=request.max_per_artist, ann_candidates=settings.ANN_CANDIDATES,
    )
    forward_ms = (time.perf_counter() - started) * 1000.0
    MODEL_FORWARD_MS.labels("ann" if use_ann else "exact").observe(forward_ms)
    if use_ann and not recommendation.fallback:
        ANN_MS.observe(forward_ms)
    service.traffic.record_request(served.recommender, request.tracks, hour, dow,
                                   top_score=recommendation.items[0][1] if recommendation.items else None)
    if recommendation.unknown_tracks:
        UNKNOWN_TRACKS_TOTAL.inc(len(recommendation.unknown_tracks))
    if recommendation.fallback:
        FALLBACK_TOTAL.inc()

    body = render_continue_body(recommendation, served.version)
    cache.set(key, body)
    return Response(body, media_type=JSON)
