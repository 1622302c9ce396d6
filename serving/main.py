"""The FastAPI application: `create_app()` wires settings, the model store, the cache and the traffic
recorder into one ServiceState (serving/state.py), which the routes declare as a dependency.

    uvicorn serving.main:app --port 8088                                   # make api
    gunicorn serving.main:app -c serving/gunicorn_conf.py                   # production

The lifespan bounds the calls to the tracking store (TRACKING_TIMEOUT_S, TRACKING_MAX_RETRIES),
loads the model before the first request, for at most MODEL_STARTUP_WAIT_S (a failure or a slow
store leaves the service up, reporting why on /healthz and /readyz and answering /continue with 503,
while the poller retries with back-off), connects the cache, and starts the poller that hot-reloads
the alias every MODEL_POLL_S.

In front of the routes, from the outside in: request metrics, admission (load shedding, deadlines,
`Connection: close` while draining: serving/admission.py), the body limits (bytes and JSON
structure: serving/middleware.py). Under gunicorn the edge (serving/edge.py) enforces the header
limits and read timeouts before any of this runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import playlistai
from playlistai.config import Settings, get_settings
from serving import model_store
from serving.admission import AdmissionMiddleware, ScoringQueue
from serving.api.routes import api_router
from serving.api.routes.health import probe_answers
from serving.cache import ResponseCache
from serving.errors import install_error_handlers
from serving.lifecycle import LIFECYCLE, freeze_heap
from serving.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from serving.model_store import (
    AliasResolver,
    Loader,
    ModelSource,
    ModelStore,
    configure_database_store,
    configure_tracking_client,
    default_loader,
    display_uri,
    inference_threads,
    mlflow_alias_resolver,
)
from serving.schemas import MAX_JSON_TOKENS
from serving.state import ServiceState
from serving.traffic import DriftStateReader, TrafficRecorder

log = logging.getLogger("serving")


def configure_logging() -> None:
    """uvicorn and gunicorn configure their own loggers only; give the app's a handler too."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")


def create_app(
    settings: Settings | None = None,
    *,
    loader: Loader | None = None,
    alias_resolver: AliasResolver | None = None,
) -> FastAPI:
    """The app; tests pass their own settings, and a fake loader/resolver where no registry exists."""
    settings = settings or get_settings()
    configure_logging()
    admission = AdmissionMiddleware.options(settings)
    # built with the app, not in the lifespan: the admission middleware is constructed with it
    scoring = ScoringQueue(admission["queue_timeout_s"], admission["queue_target_s"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load = loader
        if load is None:
            threads = inference_threads(settings)
            load = default_loader(settings.MLFLOW_TRACKING_URI, num_threads=threads,
                                  item_table_dtype=settings.ITEM_TABLE_DTYPE)
            log.info("inference uses %d thread(s) per worker, the item table in %s", threads,
                     settings.ITEM_TABLE_DTYPE)
            # models are logged from code and loaded from their package (SHA-256 checked, weights
            # read with weights_only=True): nothing here needs MLflow to unpickle, so it must not
            os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        if (loader is None or alias_resolver is None) and settings.MLFLOW_TRACKING_URI.startswith(("http:", "https:")):
            timeout_s, retries = configure_tracking_client(settings)
            log.info("calls to the tracking store %s: %g s timeout, %d retr%s", display_uri(settings.MLFLOW_TRACKING_URI),
                     timeout_s, retries, "y" if retries == 1 else "ies")
        elif loader is None or alias_resolver is None:
            tries = configure_database_store(settings)
            if tries is not None:
                log.info("the tracking store %s is a database: %d tr%s to connect per check",
                         display_uri(settings.MLFLOW_TRACKING_URI), tries, "y" if tries == 1 else "ies")
        store = ModelStore(
            ModelSource.from_settings(settings),
            load,
            alias_resolver or mlflow_alias_resolver(settings.MLFLOW_TRACKING_URI),
            model_alias_label=settings.MODEL_ALIAS,
            tracking_uri=settings.MLFLOW_TRACKING_URI,
        )
        store.on_loaded = freeze_heap     # no-op unless the server asked for it (serving/edge.py)
        cache = ResponseCache(settings.REDIS_URL or None, settings.CACHE_TTL_S, settings.REDIS_TIMEOUT_MS,
                              settings.LOCAL_CACHE_MAX_ITEMS, settings.LOCAL_CACHE_MAX_BYTES)
        state = ServiceState(settings, store, cache, TrafficRecorder.from_settings(settings),
                             DriftStateReader.from_settings(settings), scoring)
        app.state.service = state
        LIFECYCLE.probes = probe_answers(state)     # the edge answers the probes from these
        await cache.start()
        await state.traffic.start()
        # the first model is awaited, so that the first request finds it; a tracking store that
        # does not answer cannot hold the start (and the port) back for longer than MODEL_STARTUP_WAIT_S
        first_check = asyncio.create_task(store.check(quiet=True), name="first-model-check")
        try:
            result = await asyncio.wait_for(asyncio.shield(first_check), settings.MODEL_STARTUP_WAIT_S)
            if result.outcome == "failed":
                first_retry_s = min(model_store.MISSING_MODEL_FIRST_RETRY_S, settings.MODEL_POLL_S)
                log.error("starting without a model: %s; next try in %g s, then with back-off up to every %g s",
                          result.error, first_retry_s, settings.MODEL_POLL_S)
        except TimeoutError:
            log.warning("no model after %g s (%s): serving 503 until it is loaded", settings.MODEL_STARTUP_WAIT_S,
                        store.reason_unavailable)
        poller = asyncio.create_task(store.poll_forever(settings.MODEL_POLL_S), name="model-poller")
        try:
            yield
        finally:
            for task in (poller, first_check):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await state.traffic.close()
            state.drift_state.close()
            await cache.close()
            LIFECYCLE.probes = {}

    app = FastAPI(
        title="PlayListAI",
        version=playlistai.__version__,
        description="Playlist continuation: the next k tracks for a playlist so far and the moment's context.",
        lifespan=lifespan,
        # metrics go to Prometheus (serving/metrics.py); FastAPI's own OpenTelemetry spans, with no
        # exporter configured, would only add work to every request
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        # `/continue/` is a 404, not a redirect to whatever the request's Host header named
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.MAX_REQUEST_BYTES, max_json_tokens=MAX_JSON_TOKENS)
    app.add_middleware(AdmissionMiddleware, queue=scoring, **admission)
    app.add_middleware(RequestMetricsMiddleware)     # outermost: counts the 413s and the 503s too
    app.include_router(api_router)
    return app


app = create_app()
