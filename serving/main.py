"""The FastAPI application: `create_app()` wires settings, the model store and the cache.

    uvicorn serving.main:app --port 8088                                   # make api
    gunicorn serving.main:app -c serving/gunicorn_conf.py                   # production

The lifespan bounds the calls to the tracking store (TRACKING_TIMEOUT_S, TRACKING_MAX_RETRIES),
loads the model before the first request (a failure leaves the service up, reporting why on /healthz
and /readyz and answering /continue with 503, while the poller retries with back-off), connects the
cache, and starts the poller that hot-reloads the alias every MODEL_POLL_S.
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
from serving import model_store, traffic
from serving.api.deps import Service
from serving.api.routes import api_router
from serving.cache import ResponseCache
from serving.errors import install_error_handlers
from serving.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from serving.model_store import (
    AliasResolver,
    Loader,
    ModelSource,
    ModelStore,
    configure_inference_threads,
    configure_tracking_client,
    default_loader,
    display_uri,
    mlflow_alias_resolver,
)

log = logging.getLogger("serving")

STARTUP_MODEL_WAIT_S = 60


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if loader is None:
            threads = configure_inference_threads(settings)
            log.info("inference uses %d thread(s) per worker", threads)
            # models are logged from code and loaded from their package (SHA-256 checked, weights
            # read with weights_only=True): nothing here needs MLflow to unpickle, so it must not
            os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        if (loader is None or alias_resolver is None) and settings.MLFLOW_TRACKING_URI.startswith(("http:", "https:")):
            timeout_s, retries = configure_tracking_client(settings)
            log.info("calls to the tracking store %s: %g s timeout, %d retr%s", display_uri(settings.MLFLOW_TRACKING_URI),
                     timeout_s, retries, "y" if retries == 1 else "ies")
        store = ModelStore(
            ModelSource.from_settings(settings),
            loader or default_loader(settings.MLFLOW_TRACKING_URI),
            alias_resolver or mlflow_alias_resolver(settings.MLFLOW_TRACKING_URI),
            model_alias_label=settings.MODEL_ALIAS,
            tracking_uri=settings.MLFLOW_TRACKING_URI,
        )
        cache = ResponseCache(settings.REDIS_URL or None, settings.CACHE_TTL_S, settings.REDIS_TIMEOUT_MS,
                              settings.LOCAL_CACHE_MAX_ITEMS)
        app.state.service = Service(settings, store, cache)
        await cache.start()
        await traffic.start(settings)      # drift feature rows to Redis; the drift state for /metrics
        # the first model is awaited, so that the first request finds it; a tracking store that
        # does not answer cannot hold the start back for longer than STARTUP_MODEL_WAIT_S
        first_check = asyncio.create_task(store.check(quiet=True), name="first-model-check")
        try:
            result = await asyncio.wait_for(asyncio.shield(first_check), STARTUP_MODEL_WAIT_S)
            if result.outcome == "failed":
                first_retry_s = min(model_store.MISSING_MODEL_FIRST_RETRY_S, settings.MODEL_POLL_S)
                log.error("starting without a model: %s; next try in %g s, then with back-off up to every %g s",
                          result.error, first_retry_s, settings.MODEL_POLL_S)
        except TimeoutError:
            log.warning("no model after %d s: serving 503 until it is loaded", STARTUP_MODEL_WAIT_S)
        poller = asyncio.create_task(store.poll_forever(settings.MODEL_POLL_S), name="model-poller")
        try:
            yield
        finally:
            for task in (poller, first_check):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await traffic.stop()
            await cache.close()

    app = FastAPI(
        title="PlayListAI",
        version=playlistai.__version__,
        description="Playlist continuation: the next k tracks for a playlist so far and the moment's context.",
        lifespan=lifespan,
        # metrics go to Prometheus (serving/metrics.py); FastAPI's own OpenTelemetry spans, with no
        # exporter configured, would only add work to every request
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.MAX_REQUEST_BYTES)
    app.add_middleware(RequestMetricsMiddleware)     # outermost: counts the 413s too
    app.include_router(api_router)
    return app


app = create_app()
