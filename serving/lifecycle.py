"""The state of this worker process that the edge, the app and its probes share: draining or not.

A worker drains from SIGTERM on (serving/edge.py, EdgeServer): `/readyz` answers 503, every response
says `Connection: close`, and requests keep being accepted and answered for SHUTDOWN_DRAIN_S; then the
worker stops accepting and gives the accepted requests SHUTDOWN_GRACE_S to finish.

One object per process, written from the signal handler (a flag and a time, nothing that can block).
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import time

log = logging.getLogger(__name__)

# keys of scope["extensions"] that the edge (serving/edge.py) sets on each request and the admission
# (serving/admission.py) reads; absent under another server or in tests. Defined here, in a module
# that imports nothing of the app: gunicorn's master imports the edge's worker class.
RECEIVED_AT = "playlistai.received_at"      # time.monotonic() when the request's head was read
WORKER_TASKS = "playlistai.worker_tasks"    # the worker's set of request tasks (queued or running)
DEADLINE = "playlistai.deadline"            # time.monotonic() after which the request is not scored
# never shed, by the edge or the admission: liveness and readiness must answer however loaded
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/admin/reload"})


class Lifecycle:
    def __init__(self) -> None:
        self.freeze_gc = False        # set by the server (serving/edge.py): freeze the heap after each model load
        self.heap_frozen = 0          # objects moved to the permanent generation by the latest freeze
        self.load_monitor = None      # the admission middleware: overloaded() says if this worker is
        self.model_loading = False    # a model is being loaded (serving/model_store.py)
        self.model_loaded_at = 0.0    # time.monotonic() when the latest load ended
        self.probes: dict = {}        # path -> () -> (status, body): the app's answers to GET /healthz, /readyz
        self.draining = False
        self.drain_started_at: float | None = None     # time.monotonic()
        self.reason: str | None = None

    def begin_drain(self, reason: str = "shutting down") -> None:
        if not self.draining:
            self.drain_started_at = time.monotonic()
            self.reason = reason
            self.draining = True

    def reset(self) -> None:
        """Back to serving (tests, and a worker that starts in a process that drained before)."""
        self.draining = False
        self.drain_started_at = None
        self.reason = None

    def describe(self) -> str:
        since = time.monotonic() - self.drain_started_at if self.drain_started_at is not None else 0.0
        return f"draining for {since:.1f} s ({self.reason}): finishing the accepted requests before exiting"


LIFECYCLE = Lifecycle()

_WORKER_IDS: dict[int, str] = {}


def worker_id() -> str:
    """This process's id for /healthz: drawn on first use in the process (gunicorn forks the workers
    from a master that may have imported this module), so that each worker has its own."""
    pid = os.getpid()
    if pid not in _WORKER_IDS:
        _WORKER_IDS[pid] = secrets.token_hex(4)
    return _WORKER_IDS[pid]


def freeze_heap(_served=None) -> int:
    """After a model load: `gc.freeze()`, so that the collector never walks the model's, the
    libraries' and the app's objects again (~450,000 in a worker).

    Without it, every request that allocates many containers (a JSON body with many arrays) set off
    full collections that walked them all: seconds of CPU for a 1 MB body. Objects frozen and freed
    later by reference counting are freed as usual; only reference cycles among them are kept (a
    replaced model's, if it had any). The first load collects first (about a second, before the
    port opens); a hot reload only freezes (instant: a collection there would stall the requests).
    Called by the model store when LIFECYCLE.freeze_gc is set (by the production server: tests
    leave their own process alone)."""
    if not LIFECYCLE.freeze_gc:
        return 0
    started = time.perf_counter()
    if not LIFECYCLE.heap_frozen:
        gc.collect()
    gc.freeze()
    LIFECYCLE.heap_frozen = gc.get_freeze_count()
    log.info("garbage collector: %d objects frozen after the model load (%.0f ms)", LIFECYCLE.heap_frozen,
             (time.perf_counter() - started) * 1000)
    return LIFECYCLE.heap_frozen
