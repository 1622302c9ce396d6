"""Every Prometheus metric the API exports, defined in one place.

Names follow the seed (`request_duration_ms`, `model_forward_ms`, ...). Add new metrics here, not
in the routes, so that the dashboards and alert rules have one list to check against.

Several gunicorn workers: when `PROMETHEUS_MULTIPROC_DIR` is set before the process starts,
prometheus-client keeps each worker's values in files there and `render_latest()` adds them up
(`serving/gunicorn_conf.py` wipes the folder at start and marks exited workers dead). Gauges say
how to combine workers through `multiprocess_mode`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = CONTENT_TYPE_LATEST

# milliseconds: the service answers in a few ms; the seed's promise is p99 < 120 ms
LATENCY_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 120, 150, 200, 300, 500, 1000, 2500)

# -- HTTP -----------------------------------------------------------------------------------------
REQUESTS_TOTAL = Counter(
    "requests", "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
)
REQUEST_DURATION_MS = Histogram(
    "request_duration_ms", "Time from the request's arrival to the end of its response, in ms",
    ["route", "status"], buckets=LATENCY_BUCKETS_MS,
)
ERRORS_TOTAL = Counter(
    "errors", "Requests that ended in an error, and failures off the request path, by route and kind",
    ["route", "kind"],
)
REQUESTS_SHED_TOTAL = Counter(
    "requests_shed", "Requests refused with 503 before any work because the worker was full (serving/admission.py), "
    "by reason: queue (waited too long) or concurrency (too many held)", ["reason"],
)
EDGE_REFUSALS_TOTAL = Counter(
    "edge_refusals", "Connections the edge answered or closed before the app (serving/edge.py), by kind: "
    "header_too_large, too_many_headers, malformed, head_timeout, body_timeout, idle_timeout", ["kind"],
)

# -- recommendations ------------------------------------------------------------------------------
MODEL_FORWARD_MS = Histogram(
    "model_forward_ms", "Time the recommender took to score one uncached request, in ms",
    ["mode"], buckets=LATENCY_BUCKETS_MS,
)
ANN_MS = Histogram(
    "ann_ms", "Time of requests answered through the FAISS index (candidate search and exact re-rank), in ms",
    buckets=LATENCY_BUCKETS_MS,
)
UNKNOWN_TRACKS_TOTAL = Counter("unknown_tracks", "Input track ids not in the model's vocabulary (dropped)")
FALLBACK_TOTAL = Counter("fallback", "Responses answered by the popularity fallback (no input track known)")

# -- cache ----------------------------------------------------------------------------------------
CACHE_HITS_TOTAL = Counter("cache_hits", "Responses served from the cache", ["backend"])
CACHE_MISSES_TOTAL = Counter("cache_misses", "Cache look-ups that found nothing", ["backend"])
CACHE_ERRORS_TOTAL = Counter("cache_errors", "Redis calls that failed or timed out", ["operation"])
CACHE_CONNECTED = Gauge(
    "cache_connected", "1 when Redis answers, 0 while the in-process cache stands in",
    multiprocess_mode="livemin",
)
# cache_hit_ratio is computed at scrape time from these two, summed over the live workers
CACHE_WINDOW_LOOKUPS = 1000
_CACHE_WINDOW_HITS = Gauge("cache_window_hits", "Hits among each worker's latest cache look-ups",
                           multiprocess_mode="livesum")
_CACHE_WINDOW_SIZE = Gauge("cache_window_lookups", "Each worker's latest cache look-ups (at most 1000)",
                           multiprocess_mode="livesum")
_WINDOW_GAUGES = {"cache_window_hits", "cache_window_lookups"}


class CacheHitWindow:
    """Hits among the latest `size` look-ups of this worker: the sliding window of cache_hit_ratio."""

    def __init__(self, size: int) -> None:
        self.outcomes: deque[bool] = deque(maxlen=size)
        self.hits = 0

    def observe(self, hit: bool) -> None:
        if len(self.outcomes) == self.outcomes.maxlen:
            self.hits -= self.outcomes[0]
        self.outcomes.append(bool(hit))
        self.hits += bool(hit)
        _CACHE_WINDOW_HITS.set(self.hits)
        _CACHE_WINDOW_SIZE.set(len(self.outcomes))


CACHE_WINDOW = CacheHitWindow(CACHE_WINDOW_LOOKUPS)

# -- model ----------------------------------------------------------------------------------------
MODEL_LOADED = Gauge("model_loaded", "1 when a model is loaded and serving", multiprocess_mode="livemin")
MODEL_INFO = Gauge(
    "model_info", "1 for the model version and alias being served (0 for those served before)",
    ["version", "alias"], multiprocess_mode="livemax",
)
MODEL_RELOADS_TOTAL = Counter(
    "model_reloads", "Checks of the served alias, by outcome (loaded, unchanged, failed)", ["outcome"],
)
MODEL_LOAD_SECONDS = Histogram(
    "model_load_seconds", "Time of each successful model load: download, file checks and warm-up, in seconds",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


# -- drift: the drift job's latest result, read at scrape time (serving/traffic.py) ----------------
DriftStateSource = Callable[[], "dict | None"]


def drift_metric_families(state: dict | None) -> list[GaugeMetricFamily]:
    """The drift gauges, with the names the drift job pushes to the Pushgateway (monitoring/drift_job.py)."""
    psi = GaugeMetricFamily("drift_psi", "Population stability index of a request feature, live vs training "
                            "(over 0.25: a large shift)", labels=["feature"])
    p_value = GaugeMetricFamily("drift_ks_p", "p-value of the drift test of a feature (Kolmogorov-Smirnov; "
                                "chi-squared for hour and dow)", labels=["feature"])
    threshold = GaugeMetricFamily("drift_p_threshold", "Bonferroni-corrected p-value under which a feature "
                                  "has drifted", labels=["feature"])
    detected = GaugeMetricFamily("drift_detected", "1 when the latest drift run found drift in some feature")
    enough = GaugeMetricFamily("drift_enough_data", "0 when the latest drift run had too few requests to test")
    samples = GaugeMetricFamily("drift_current_samples", "Requests the latest drift run compared with training")
    finished = GaugeMetricFamily("drift_last_success_timestamp_seconds", "When the latest drift run finished")
    if state:
        for feature, value in state.get("psi", {}).items():
            psi.add_metric([feature], value)
        for feature, value in state.get("p_values", {}).items():
            p_value.add_metric([feature], value)
        for feature, value in state.get("thresholds", {}).items():
            threshold.add_metric([feature], value)
        detected.add_metric([], float(bool(state.get("drift_detected"))))
        enough.add_metric([], float(state.get("status") != "not_enough_data"))
        samples.add_metric([], float(state.get("n_current", 0)))
        if state.get("finished_at") is not None:
            finished.add_metric([], float(state["finished_at"]))
    return [psi, p_value, threshold, detected, enough, samples, finished]


class ScrapeTimeMetrics:
    """Passes a collector's metrics through and adds those computed at scrape time: cache_hit_ratio
    (from the workers' windows, summed) and the drift gauges (empty without a drift state source)."""

    def __init__(self, source, drift_state: DriftStateSource | None = None) -> None:
        self.source = source
        self.drift_state = drift_state

    def collect(self):
        window = dict.fromkeys(_WINDOW_GAUGES, 0.0)
        for family in self.source.collect():
            if family.name in _WINDOW_GAUGES:
                window[family.name] = sum(sample.value for sample in family.samples)
                continue
            yield family
        ratio = GaugeMetricFamily("cache_hit_ratio", f"Share of cache hits among each worker's latest "
                                  f"{CACHE_WINDOW_LOOKUPS} look-ups, over all workers")
        if window["cache_window_lookups"] > 0:
            ratio.add_metric([], window["cache_window_hits"] / window["cache_window_lookups"])
        yield ratio
        yield from drift_metric_families(self.drift_state() if self.drift_state is not None else None)


def render_latest(drift_state: DriftStateSource | None = None) -> bytes:
    """The Prometheus text exposition of this process, or of all workers in multiprocess mode, with
    the drift gauges of `drift_state` (the app's DriftStateReader)."""
    source = prometheus_multiprocess.MultiProcessCollector(None) if multiprocess_enabled() else REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeTimeMetrics(source, drift_state))
    return generate_latest(registry)


def set_model_info(version: str | None, alias: str, previous_version: str | None = None) -> None:
    if previous_version is not None and previous_version != version:
        MODEL_INFO.labels(version=previous_version, alias=alias).set(0)
    MODEL_INFO.labels(version=version or "unversioned", alias=alias).set(1)
