"""Which model serves, how it is loaded, and how it is replaced while requests run.

The store resolves the configured source (by default `models:/{REGISTERED_MODEL_NAME}@{MODEL_ALIAS}`)
to a version, loads exactly that version (`models:/{name}/{version}`, so a concurrent alias move
cannot mix versions), warms it up with one request of each kind, and only then swaps it in with a
single reference assignment. A request reads `store.current` once and keeps that model until it
answers, so requests in flight finish on the old model. A failed check or load leaves the old model
serving, is counted in `model_reloads_total{outcome="failed"}` and `errors_total`, and is reported
by `/healthz` until a later check succeeds.

Resolution and loading run in worker threads (`asyncio.to_thread`), never on the request path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serving.metrics import ERRORS_TOTAL, MODEL_LOADED, MODEL_RELOADS_TOTAL, set_model_info

log = logging.getLogger(__name__)

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
MISSING_MODEL_FIRST_RETRY_S = 1.0

Loader = Callable[[str], Any]                  # load URI -> Recommender
AliasResolver = Callable[[str, str], str]      # (registered name, alias) -> version


@dataclass(frozen=True)
class ModelSource:
    """Where the served model comes from: a registry alias (polled), a pinned version, or a URI/path."""

    uri: str
    registered_name: str | None = None
    alias: str | None = None
    pinned_version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelSource:
        if match := ALIAS_URI.match(uri):
            return cls(uri, registered_name=match["name"], alias=match["alias"])
        if match := VERSION_URI.match(uri):
            return cls(uri, registered_name=match["name"], pinned_version=match["version"])
        return cls(uri)

    @classmethod
    def from_settings(cls, settings) -> ModelSource:
        uri = settings.MODEL_URI or f"models:/{settings.REGISTERED_MODEL_NAME}@{settings.MODEL_ALIAS}"
        return cls.parse(uri)

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None


@dataclass(frozen=True)
class ServedModel:
    recommender: Any
    version: str | None          # registry version, None for a model loaded from a plain path/URI
    loaded_from: str             # the URI that was actually loaded
    cache_namespace: str         # part of every cache key: a new model never hits an old entry
    loaded_at: float             # UNIX time


@dataclass(frozen=True)
class CheckResult:
    outcome: Literal["loaded", "unchanged", "failed"]
    model_version: str | None
    previous_version: str | None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"outcome": self.outcome, "model_version": self.model_version,
                "previous_version": self.previous_version, "error": self.error}


def mlflow_alias_resolver(tracking_uri: str) -> AliasResolver:
    def resolve(name: str, alias: str) -> str:
        from mlflow import MlflowClient

        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version)

    return resolve


def _local_directory(uri: str) -> Path | None:
    if uri.startswith("file://"):
        path = Path(uri[len("file://"):])
    elif "://" in uri or uri.startswith(("models:", "runs:")):
        return None
    else:
        path = Path(uri)
    return path if path.is_dir() else None


def default_loader(tracking_uri: str) -> Loader:
    """A local folder (a model package, or a pyfunc model folder holding one) loads directly;
    registry and `runs:/` URIs load through the MLflow pyfunc."""

    def load(uri: str):
        directory = _local_directory(uri)
        if directory is not None:
            from playlistai.inference import Recommender

            return Recommender.from_directory(directory)
        import mlflow

        try:
            from playlistai.registry import load_recommender
        except ImportError:
            from playlistai.registry.pyfunc import load_recommender

        mlflow.set_tracking_uri(tracking_uri)
        return load_recommender(uri)

    return load


def _namespace_of(source: ModelSource, version: str | None, load_uri: str) -> str:
    if version is not None:
        return f"{source.registered_name}/{version}"
    # a plain path or URI: its files' modification times stand in for a version
    fingerprint = load_uri
    path = Path(load_uri)
    if path.exists():
        files = [path] + (sorted(path.iterdir()) if path.is_dir() else [])
        fingerprint += "|" + "|".join(f"{f.name}:{f.stat().st_mtime_ns}" for f in files)
    return "uri/" + hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()


def warm_up(recommender) -> None:
    """One exact and one ANN request, so that a model that cannot answer is never swapped in and
    the first real request does not pay for lazy initialisation."""
    track_ids = list(getattr(recommender.vocab, "track_ids", []))[:5]
    recommender.recommend(track_ids, 10, 12, 3)
    recommender.recommend(track_ids, 10, 12, 3, use_ann=True)


class ModelStore:
    def __init__(
        self,
        source: ModelSource,
        loader: Loader,
        alias_resolver: AliasResolver | None = None,
        model_alias_label: str = "",
    ) -> None:
        self.source = source
        self._load = loader
        self._resolve_alias = alias_resolver
        self.alias_label = source.alias or model_alias_label
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.last_check_at: float | None = None
        self._lock = asyncio.Lock()
        MODEL_LOADED.set(0)

    @property
    def reason_unavailable(self) -> str | None:
        if self.current is not None:
            return None
        return self.last_error or f"no model loaded yet from {self.source.uri}"

    def _target(self) -> tuple[str | None, str]:
        """-> (version, URI to load). Runs in a worker thread: it may call the tracking store."""
        source = self.source
        if source.follows_alias:
            if self._resolve_alias is None:
                raise RuntimeError("no alias resolver configured")
            version = self._resolve_alias(source.registered_name, source.alias)
            return version, f"models:/{source.registered_name}/{version}"
        return source.pinned_version, source.uri

    def _load_and_warm(self, load_uri: str):
        recommender = self._load(load_uri)
        warm_up(recommender)
        return recommender

    async def check(self) -> CheckResult:
        """Resolve the source; when it names a model other than the one serving, load and swap it."""
        async with self._lock:
            self.last_check_at = time.time()
            previous = self.current
            previous_version = previous.version if previous else None
            try:
                version, load_uri = await asyncio.to_thread(self._target)
            except Exception as exc:  # the tracking store is down, the alias is gone, ...
                return self._failed(f"cannot resolve {self.source.uri}: {type(exc).__name__}: {exc}",
                                    previous_version, kind="model_resolve")

            if previous is not None and version is not None and version == previous.version:
                self.last_error = None
                MODEL_RELOADS_TOTAL.labels(outcome="unchanged").inc()
                return CheckResult("unchanged", version, previous_version)

            started = time.perf_counter()
            try:
                recommender = await asyncio.to_thread(self._load_and_warm, load_uri)
            except Exception as exc:  # missing artifact, corrupt weights, vocabulary mismatch, ...
                label = f"version {version}" if version else load_uri
                log.exception("loading %s failed; %s", label,
                              "the old model keeps serving" if previous else "no model is serving")
                return self._failed(f"loading {label} failed: {type(exc).__name__}: {exc}",
                                    previous_version, kind="model_load")

            self.current = ServedModel(
                recommender=recommender,
                version=version or getattr(recommender, "model_version", None),
                loaded_from=load_uri,
                cache_namespace=_namespace_of(self.source, version, load_uri),
                loaded_at=time.time(),
            )
            self.last_error = None
            MODEL_RELOADS_TOTAL.labels(outcome="loaded").inc()
            MODEL_LOADED.set(1)
            set_model_info(self.current.version, self.alias_label, previous_version)
            log.info("serving %s (version %s, loaded in %.1f s; was %s)", load_uri, self.current.version,
                     time.perf_counter() - started, previous_version)
            return CheckResult("loaded", self.current.version, previous_version)

    def _failed(self, message: str, previous_version: str | None, kind: str) -> CheckResult:
        self.last_error = message
        MODEL_RELOADS_TOTAL.labels(outcome="failed").inc()
        ERRORS_TOTAL.labels(route="model_reload", kind=kind).inc()
        log.warning("%s", message)
        return CheckResult("failed", previous_version, previous_version, message)

    async def poll_forever(self, interval_s: float) -> None:
        """Check the alias every `interval_s`; without a model, retry sooner with back-off."""
        missing_delay = MISSING_MODEL_FIRST_RETRY_S
        while True:
            if self.current is None:
                await asyncio.sleep(min(missing_delay, interval_s))
                missing_delay = min(missing_delay * 2, max(interval_s, MISSING_MODEL_FIRST_RETRY_S))
            else:
                await asyncio.sleep(interval_s)
                if not self.source.follows_alias:
                    continue      # a pinned version or a path never changes by itself
            try:
                await self.check()
            except Exception:     # never let the poller die
                log.exception("model check failed unexpectedly")


INFERENCE_THREADS_ENV = "PLAYLISTAI_INFERENCE_THREADS"


def configure_inference_threads(settings) -> int:
    """Inference threads of each worker (torch intra-op and FAISS): TORCH_THREADS, 1 by default.

    One request is a batch of one: its matrix products are too small to gain from more threads,
    and OpenMP threads that spin on contended cores made a request 25x slower in the benchmark
    (BENCHMARKS.md). Throughput comes from workers (WEB_CONCURRENCY) instead. 0 = cores / workers.
    The Recommender applies it to torch and FAISS when it loads.
    """
    threads = settings.TORCH_THREADS or max(1, (os.cpu_count() or 1) // max(1, settings.WEB_CONCURRENCY))
    os.environ[INFERENCE_THREADS_ENV] = str(threads)
    return threads
