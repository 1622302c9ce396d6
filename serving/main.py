"""The FastAPI application: `create_app()` wires settings, the model store and the cache.

    uvicorn serving.main:app --port 8088                                   # make api
    gunicorn serving.main:app -c serving/gunicorn_conf.py                   # production

The lifespan loads the model before the first request (a failure leaves the service up, reporting
why on /healthz and answering /continue with 503), connects the cache, and starts the poller that
hot-reloads the alias every MODEL_POLL_S.
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
from serving import traffic
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
    default_loader,
    mlflow_alias_resolver,
)

log = logging.getLogger("serving")

STARTUP_MODEL_WAIT_S = 60


def configure_logging() -> None:
    """uvicorn and gunicorn configure their own loggers only; give the app's a handler too."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
        store = ModelStore(
            ModelSource.from_settings(settings),
            loader or default_loader(settings.MLFLOW_TRACKING_URI),
            alias_resolver or mlflow_alias_resolver(settings.MLFLOW_TRACKING_URI),
            model_alias_label=settings.MODEL_ALIAS,
        )
        cache = ResponseCache(settings.REDIS_URL or None, settings.CACHE_TTL_S, settings.REDIS_TIMEOUT_MS,
                              settings.LOCAL_CACHE_MAX_ITEMS)
        app.state.service = Service(settings, store, cache)
        await cache.start()
        await traffic.start(settings)      # drift feature rows to Redis; the drift state for /metrics
        # the first model is awaited, so that the first request finds it; a tracking store that
        # does not answer cannot hold the start back for longer than STARTUP_MODEL_WAIT_S
        first_check = asyncio.create_task(store.check(), name="first-model-check")
        try:
            result = await asyncio.wait_for(asyncio.shield(first_check), STARTUP_MODEL_WAIT_S)
            if result.outcome == "failed":
                log.error("starting without a model: %s (retrying in the background)", result.error)
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
