"""Which model serves, how it is loaded, and how it is replaced while requests run.

The store resolves the configured source (by default `models:/{REGISTERED_MODEL_NAME}@{MODEL_ALIAS}`)
to a version, loads exactly that version (`models:/{name}/{version}`, so a concurrent alias move
cannot mix versions), warms it up with one request of each kind, and only then swaps it in with a
single reference assignment. A request reads `store.current` once and keeps that model until it
answers, so requests in flight finish on the old model. A failed check or load leaves the old model
serving, is counted in `model_reloads_total{outcome="failed"}` and `errors_total`, and is reported
by `/healthz` until a later check succeeds. Each successful load's seconds (download, checks,
warm-up) go to `model_load_seconds`.

A version that failed to load (missing artifact, corrupt file, vocabulary that does not match the
weights) is not downloaded again by the poller for FAILED_VERSION_RETRY_S while the alias keeps
naming it; `/admin/reload` retries it at once. A tracking store that cannot be reached is named as
such in the error ("cannot reach the tracking store at ..."), and never marks a version as bad.
Without a model, the poller retries with back-off (1 s, doubling up to the poll interval) and logs
each failure with the delay before its next try.

Resolution and loading run in worker threads (`asyncio.to_thread`), never on the request path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from playlistai.config import available_cpus
from playlistai.model_ref import ModelRef
from serving.lifecycle import LIFECYCLE
from serving.metrics import (
    ERRORS_TOTAL,
    MODEL_LOAD_SECONDS,
    MODEL_LOADED,
    MODEL_RELOADS_TOTAL,
    set_model_info,
)

log = logging.getLogger(__name__)

MISSING_MODEL_FIRST_RETRY_S = 1.0
FAILED_VERSION_RETRY_S = 300.0   # the poller downloads a version that failed to load again after this

Loader = Callable[[str], Any]                  # load URI -> Recommender
AliasResolver = Callable[[str, str], str]      # (registered name, alias) -> version


@dataclass(frozen=True)
class ModelSource:
    """Where the served model comes from: a registry alias (polled), a pinned version, or a URI/path.

    A malformed reference does not stop the service: every check fails with the parse error, which
    /healthz reports, as a reference that cannot be loaded does."""

    uri: str
    ref: ModelRef | None = None
    error: str | None = None          # why `uri` is not a model reference

    @classmethod
    def parse(cls, uri: str) -> ModelSource:
        try:
            return cls(uri, ModelRef.parse(uri))
        except ValueError as exc:
            return cls(uri, error=str(exc))

    @classmethod
    def from_settings(cls, settings) -> ModelSource:
        uri = settings.MODEL_URI or f"models:/{settings.REGISTERED_MODEL_NAME}@{settings.MODEL_ALIAS}"
        return cls.parse(uri)

    @property
    def registered_name(self) -> str | None:
        return self.ref.name if self.ref is not None and self.ref.registered else None

    @property
    def alias(self) -> str | None:
        return self.ref.alias if self.ref is not None else None

    @property
    def pinned_version(self) -> str | None:
        return self.ref.version if self.ref is not None and self.ref.path == "" else None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None


@dataclass(frozen=True)
class ServedModel:
    recommender: Any
    version: str | None          # registry version, None for a model loaded from a plain path/URI
    cache_namespace: str         # part of every cache key: a new model never hits an old entry


@dataclass(frozen=True)
class CheckResult:
    outcome: Literal["loaded", "unchanged", "failed"]
    model_version: str | None
    previous_version: str | None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"outcome": self.outcome, "model_version": self.model_version,
                "previous_version": self.previous_version, "error": self.error}


def configure_tracking_client(settings) -> tuple[float, int]:
    """Bound each call of this process to the tracking store: TRACKING_TIMEOUT_S and
    TRACKING_MAX_RETRIES become MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES, unless those
    are set already. MLflow's own defaults (120 s, 7 retries with exponential back-off) would hold
    one check of an unreachable store for minutes; the model poller retries by itself instead."""
    timeout = os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{settings.TRACKING_TIMEOUT_S:g}")
    retries = os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.TRACKING_MAX_RETRIES))
    return float(timeout), int(retries)


DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "sqlite")


def configure_database_store(settings) -> int | None:
    """A tracking URI that is a database (`postgresql://...`): MLflow creates its engine with 10 tries
    and back-off (0.1 s doubling: about 100 s when the database is down), which held the start of the
    API and each poll for that long. In this process it gets 1 + TRACKING_MAX_RETRIES tries; the
    model poller retries by itself, with back-off. Returns the tries, or None for another URI."""
    scheme = settings.MLFLOW_TRACKING_URI.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in DATABASE_SCHEMES:
        return None
    try:
        from mlflow.store.db import utils as db_utils
    except ImportError:
        return None
    db_utils.MAX_RETRY_COUNT = 1 + settings.TRACKING_MAX_RETRIES
    return db_utils.MAX_RETRY_COUNT


def display_uri(uri: str | None) -> str:
    """A tracking URI fit for a log or /healthz: no user name or password."""
    if not uri:
        return "(not configured)"
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _network_error_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(errors that mean "not reachable", the subset that means "too slow")."""
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout as RequestsTimeout
    except ImportError:
        return (ConnectionError, TimeoutError), (TimeoutError,)
    return (RequestsConnectionError, RequestsTimeout, ConnectionError, TimeoutError), (RequestsTimeout, TimeoutError)


_DATABASE_ERROR_MODULES = ("sqlalchemy", "psycopg", "psycopg2", "pymysql", "sqlite3")
_DATABASE_REASONS = (
    ("connection refused", "connection refused"), ("timeout expired", "timed out"), ("timed out", "timed out"),
    ("could not translate host name", "unknown host"), ("name or service not known", "unknown host"),
    ("password authentication failed", "authentication failed"), ("no such host", "unknown host"),
)


def _database_reason(exc: BaseException) -> str | None:
    """Why a database store could not be used (SQLAlchemy's, the driver's or sqlite3's
    OperationalError: the server is down, the host unknown, the file cannot be opened), or None."""
    kind = type(exc)
    if kind.__name__ not in ("OperationalError", "InterfaceError") or \
            kind.__module__.split(".", 1)[0] not in _DATABASE_ERROR_MODULES:
        return None
    text = str(exc).lower()
    for phrase, reason in _DATABASE_REASONS:
        if phrase in text:
            return reason
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else kind.__name__
    return first.removeprefix("(psycopg.OperationalError) ").removeprefix("(sqlite3.OperationalError) ")[:200]


def unreachable_reason(exc: BaseException) -> str | None:
    """Why the tracking store could not be reached ("connection refused", "timed out", ...), or None
    when `exc` is some other failure. MLflow wraps the network error of `requests` (or the database
    driver's error) in an MlflowException; the original is found in the exception's chain."""
    network, timeouts = _network_error_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (database := _database_reason(current)) is not None:
            return database
        if isinstance(current, network):
            text = str(current)
            if match := _ERRNO_TEXT.search(text):
                return match[1].strip().lower()
            if isinstance(current, timeouts) or "timed out" in text.lower():
                return "timed out"
            return f"{type(current).__name__}: {text}"[:200]
        current = current.__cause__ or current.__context__
    return None


def _is_package_error(exc: BaseException) -> bool:
    """A ModelPackageError (its message names the file at fault), without importing the inference
    code where no real model was ever loaded."""
    package = sys.modules.get("playlistai.inference.package")
    return package is not None and isinstance(exc, package.ModelPackageError)


def mlflow_alias_resolver(tracking_uri: str) -> AliasResolver:
    def resolve(name: str, alias: str) -> str:
        from mlflow import MlflowClient

        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version)

    return resolve


def default_loader(tracking_uri: str, num_threads: int | None = None, item_table_dtype: str = "float32") -> Loader:
    """A local folder (a model package, or a pyfunc model folder holding one) loads directly;
    registry and `runs:/` URIs load through the MLflow pyfunc. Either way the Recommender applies
    `num_threads` (inference_threads) to torch and FAISS, and stores its item table in
    `item_table_dtype` (ITEM_TABLE_DTYPE)."""

    def load(uri: str):
        directory = ModelRef.parse(uri).local_dir
        if directory is not None:
            from playlistai.inference import Recommender

            return Recommender.from_directory(directory, num_threads=num_threads, item_table_dtype=item_table_dtype)
        import mlflow

        try:
            from playlistai.registry import load_recommender
        except ImportError:
            from playlistai.registry.pyfunc import load_recommender

        mlflow.set_tracking_uri(tracking_uri)
        return load_recommender(uri, num_threads, item_table_dtype)

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


@dataclass(frozen=True)
class _FailedLoad:
    load_uri: str
    message: str
    retry_at: float              # time.monotonic() after which the poller downloads it again


class ModelStore:
    def __init__(
        self,
        source: ModelSource,
        loader: Loader,
        alias_resolver: AliasResolver | None = None,
        model_alias_label: str = "",
        tracking_uri: str | None = None,
    ) -> None:
        self.source = source
        self._load = loader
        self._resolve_alias = alias_resolver
        self.alias_label = source.alias or model_alias_label
        self.tracking_uri = tracking_uri      # named in the errors when the store cannot be reached
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self._failed_load: _FailedLoad | None = None
        self._lock = asyncio.Lock()
        self._checking_since: float | None = None     # time.monotonic() of the check in progress
        self.on_loaded: Callable[[ServedModel], None] | None = None    # called after each swap
        MODEL_LOADED.set(0)

    @property
    def reason_unavailable(self) -> str | None:
        if self.current is not None:
            return None
        if self.last_error:
            return self.last_error
        reason = f"no model loaded yet from {self.source.uri}"
        if self._checking_since is not None:
            ref = self.source.ref
            store = (f" through the tracking store at {display_uri(self.tracking_uri)}"
                     if ref is not None and ref.local_dir is None and self.tracking_uri else "")
            reason += f": resolving and loading it{store}, for {time.monotonic() - self._checking_since:.0f} s so far"
        return reason

    def _target(self) -> tuple[str | None, str]:
        """-> (version, URI to load). Runs in a worker thread: it may call the tracking store."""
        source = self.source
        if source.ref is None:
            raise ValueError(source.error)
        if source.follows_alias:
            if self._resolve_alias is None:
                raise RuntimeError("no alias resolver configured")
            pinned = source.ref.pin(self._resolve_alias)
            return pinned.version, pinned.uri
        return source.pinned_version, source.uri

    def _load_and_warm(self, load_uri: str):
        recommender = self._load(load_uri)
        warm_up(recommender)
        return recommender

    def _unreachable(self, why: str, what: str) -> str:
        return f"cannot reach the tracking store at {display_uri(self.tracking_uri)} ({why}) to {what}"

    async def check(self, *, polled: bool = False, quiet: bool | None = None) -> CheckResult:
        """Resolve the source; when it names a model other than the one serving, load and swap it.

        `polled`: a check of the poller, which does not download again a version that failed to load
        less than FAILED_VERSION_RETRY_S ago. Other checks (start-up, /admin/reload) always try.
        `quiet`: the caller logs a failure itself, with the time of its next try (by default, the
        poller does; other failures are logged here)."""
        quiet = polled if quiet is None else quiet
        async with self._lock:
            self._checking_since = time.monotonic()
            try:
                return await self._check_locked(polled, quiet)
            finally:
                self._checking_since = None

    async def _check_locked(self, polled: bool, quiet: bool) -> CheckResult:
        previous = self.current
        previous_version = previous.version if previous else None
        try:
            version, load_uri = await asyncio.to_thread(self._target)
        except Exception as exc:  # the tracking store is down, the alias is gone, ...
            why = unreachable_reason(exc)
            message = (self._unreachable(why, f"resolve {self.source.uri}") if why is not None
                       else f"cannot resolve {self.source.uri}: {type(exc).__name__}: {exc}")
            return self._failed(message, previous_version, kind="model_resolve", quiet=quiet)

        if previous is not None and version is not None and version == previous.version:
            self.last_error = None
            self._failed_load = None
            MODEL_RELOADS_TOTAL.labels(outcome="unchanged").inc()
            return CheckResult("unchanged", version, previous_version)

        failed = self._failed_load
        if polled and failed is not None and failed.load_uri == load_uri and time.monotonic() < failed.retry_at:
            # the alias still names the version that could not be loaded: report it again, without
            # downloading it again (and without counting it again in errors_total)
            self.last_error = failed.message
            MODEL_RELOADS_TOTAL.labels(outcome="failed").inc()
            return CheckResult("failed", previous_version, previous_version, failed.message)

        label = f"version {version}" if version else load_uri
        started = time.perf_counter()
        LIFECYCLE.model_loading = True       # the load competes for the CPU: not overload (serving/admission.py)
        try:
            recommender = await asyncio.to_thread(self._load_and_warm, load_uri)
        except Exception as exc:  # missing artifact, corrupt weights, vocabulary mismatch, store down, ...
            why = unreachable_reason(exc)
            if why is not None:   # the version may be fine: the next check tries it again
                message = self._unreachable(why, f"load {label}")
            else:
                message = f"loading {label} failed: {type(exc).__name__}: {exc}"
                self._failed_load = _FailedLoad(load_uri, message, time.monotonic() + FAILED_VERSION_RETRY_S)
                if not _is_package_error(exc):   # not a known package problem: keep the trace
                    log.error("loading %s raised", label, exc_info=exc)
            return self._failed(message, previous_version, kind="model_load", quiet=quiet)
        finally:
            LIFECYCLE.model_loading = False
            LIFECYCLE.model_loaded_at = time.monotonic()

        load_s = time.perf_counter() - started
        self.current = ServedModel(
            recommender=recommender,
            version=version or getattr(recommender, "model_version", None),
            cache_namespace=_namespace_of(self.source, version, load_uri),
        )
        self.last_error = None
        self._failed_load = None
        MODEL_RELOADS_TOTAL.labels(outcome="loaded").inc()
        MODEL_LOAD_SECONDS.observe(load_s)
        MODEL_LOADED.set(1)
        set_model_info(self.current.version, self.alias_label, previous_version)
        log.info("serving %s (version %s, loaded in %.1f s; was %s)", load_uri, self.current.version,
                 load_s, previous_version)
        if self.on_loaded is not None:
            try:
                self.on_loaded(self.current)
            except Exception:
                log.exception("the hook after loading %s failed", label)
        return CheckResult("loaded", self.current.version, previous_version)

    def _failed(self, message: str, previous_version: str | None, kind: str, quiet: bool = False) -> CheckResult:
        self.last_error = message
        MODEL_RELOADS_TOTAL.labels(outcome="failed").inc()
        ERRORS_TOTAL.labels(route="model_reload", kind=kind).inc()
        if not quiet:
            log.warning("%s; %s", message, f"version {previous_version} keeps serving" if previous_version
                        else "no model is serving")
        return CheckResult("failed", previous_version, previous_version, message)

    async def poll_forever(self, interval_s: float) -> None:
        """Check the alias every `interval_s`. Without a model, retry sooner, with back-off: the first
        retry after MISSING_MODEL_FIRST_RETRY_S, each next one twice as late, up to `interval_s`.
        Every failed check is logged with the delay before the next one."""
        retry_s = MISSING_MODEL_FIRST_RETRY_S
        while True:
            if self.current is None:
                delay = min(retry_s, interval_s)
                retry_s = min(retry_s * 2, max(interval_s, MISSING_MODEL_FIRST_RETRY_S))
            else:
                delay, retry_s = interval_s, MISSING_MODEL_FIRST_RETRY_S
            await asyncio.sleep(delay)
            if self.current is not None and not self.source.follows_alias:
                continue      # a pinned version or a path never changes by itself
            try:
                result = await self.check(polled=True)
            except Exception:     # never let the poller die
                log.exception("model check failed unexpectedly")
                continue
            if result.outcome != "failed":
                continue
            if self.current is None:
                log.warning("no model is serving: %s; next try in %g s", result.error, min(retry_s, interval_s))
            else:
                log.warning("%s; version %s keeps serving; next check in %g s", result.error,
                            self.current.version, interval_s)


def inference_threads(settings) -> int:
    """Inference threads of each worker (torch intra-op and FAISS): TORCH_THREADS, 1 by default.

    One request is a batch of one: its matrix products are too small to gain from more threads,
    and OpenMP threads that spin on contended cores made a request 25x slower in the benchmark
    (BENCHMARKS.md). Throughput comes from workers (WEB_CONCURRENCY) instead. 0 = cores / workers.
    The Recommender applies it to torch and FAISS when it loads (default_loader).
    """
    return settings.TORCH_THREADS or max(1, available_cpus() // max(1, settings.WEB_CONCURRENCY))
