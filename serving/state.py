"""What one app holds while it serves: built by the lifespan (serving/main.py), reached by the routes
through `ServiceDep` (serving/api/deps.py).

Kept on one object, not in module globals, so that two apps in one process (the tests build many)
never share a model, a cache or a traffic buffer, and an app that stopped leaves nothing behind.
Process-wide things stay where they are: the Prometheus metric objects (registered once per process,
serving/metrics.py) and the worker's lifecycle, which the edge reads before the app runs
(serving/lifecycle.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from playlistai.config import Settings
from serving.admission import ScoringQueue
from serving.cache import ResponseCache
from serving.model_store import ModelStore
from serving.traffic import DriftStateReader, TrafficRecorder


@dataclass(frozen=True)
class ServiceState:
    settings: Settings
    models: ModelStore
    cache: ResponseCache
    traffic: TrafficRecorder            # drift feature rows of the answered requests, to Redis
    drift_state: DriftStateReader       # the drift job's latest result, reported on /metrics
    scoring: ScoringQueue | None = None      # the worker's queue of requests waiting to score
