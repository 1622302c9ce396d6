"""Run the training worker on Ray Train: a TorchTrainer with N workers under DDP.

- Ray: an existing cluster when `RAY_ADDRESS` is set (e.g. the KubeRay head), otherwise a local Ray
  started here with no dashboard and a small object store (the trainer moves no data through it:
  each worker reads its own shard of the splits), shut down again afterwards.
- Backend: gloo on CPU, NCCL when the workers have GPUs (TorchTrainer's default for each). GPUs are
  used when there are enough for one per worker: on the cluster `RAY_ADDRESS` names (as its
  resources say), or on this machine without it.
- MLflow: Ray Train V2 rejects the MLflowLoggerCallback, and N workers opening N runs would
  duplicate them; so the driver owns the run and passes its id to the workers, and only rank 0
  logs, into that run, by id (worker.MlflowEpochLogger).
- Checkpoints: rank 0 hands each epoch's state directory to `ray.train.report`; Ray copies it to
  `storage_path/name/epoch_NNN` and keeps the last `KEEP_CHECKPOINTS`. On a multi-node cluster
  storage_path and data_dir must be shared storage (NFS, or a cloud URI for storage_path).
- Output: the user reads the epoch lines and the stage's summary, so Ray Train's own INFO lines
  (resource requests, "Reporting training result ...: TrainingReport(...)", checkpoint paths) stay
  in Ray's log files (RunConfig's logging level WARNING). On the local Ray, three more things are
  quieted at their source (`quiet_local_ray`, `quiet_local_ray_worker`):
  * Ray Train V2's PlacementGroupCleaner, a detached actor of every run, asks Ray's State API each
    second whether the controller still lives. That API is served by the Ray dashboard, which the
    `ray[train]` install does not have ("Cannot include dashboard with missing packages"), so every
    check fails: a "Failed to query Ray Train Controller actor state" warning a second, or, with
    another Ray running on the machine, a `Found multiple active Ray instances` ConnectionError that
    kills its thread with a traceback. The local cluster, and its placement groups, end with the run
    (`ray.shutdown`), so the cleaner has nothing to do here: its logger and its thread's exit are
    silenced in the job's workers (a runtime-env setup hook). On a cluster (RAY_ADDRESS: KubeRay's
    head runs the dashboard) it works, and nothing is changed.
  * the preemption watcher (spot instances) is off: a laptop is not preempted, and its actor only
    produced a core_worker error line about its constructor arguments;
  * the notice that token authentication is on (it stays on), and ANSI colours when stderr is not a
    terminal (a log file, `make` output piped to a file).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

KEEP_CHECKPOINTS = 2
OBJECT_STORE_BYTES = 256 * 1024**2
# Ray Train's console output: warnings and errors (its INFO lines go to Ray's log files only)
RAY_TRAIN_CONSOLE_LEVEL = "WARNING"
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
CLEANER_THREAD = "PlacementGroupCleanerMonitor"
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
log = logging.getLogger(__name__)


@dataclass
class RayRunResult:
    summary: dict                 # what rank 0's train_worker returned
    checkpoint_dir: Path | None   # the last epoch's state directory, on local disk


def quiet_local_ray_worker() -> None:
    """Runs in every worker process of the local Ray (the job's `worker_process_setup_hook`): the
    PlacementGroupCleaner, which cannot reach the State API without a dashboard, fails quietly."""
    logging.getLogger(CLEANER_LOGGER).setLevel(logging.CRITICAL)
    previous = threading.excepthook

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name == CLEANER_THREAD:
            logging.getLogger(CLEANER_LOGGER).debug("monitor thread ended: %r", args.exc_value)
            return
        previous(args)

    threading.excepthook = excepthook


def quiet_local_ray() -> dict:
    """Set this process up for a local Ray (see the module docstring, "Output"); return the job's
    runtime env."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")   # propagated to the controller
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
    return {"worker_process_setup_hook": f"{__name__}.quiet_local_ray_worker"}


def start_ray(address: str | None, num_workers: int) -> bool:
    """Connect to `address` or start a local Ray; return True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    # Ray starts its workers at niceness 15 so that its own daemons stay responsive on a dedicated
    # node; on the user's machine the training is the job they asked for, and at 15 it lost up to a
    # third of its events/s to background jobs at niceness 19 (DIGINETICA, 2 cores). The workers run
    # at the driver's niceness instead (`nice mlflow run ...` still lowers them).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        address="local",            # never attach to a stray local cluster by accident
        num_cpus=max(num_workers, os.cpu_count() or 1),
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=True,
        logging_level=logging.WARNING,
        runtime_env=quiet_local_ray(),
    )
    return True


def cpus_per_worker(num_workers: int, address: str | None) -> int:
    """Locally, split the machine's cores between the workers (1 worker gets them all, so 1 vs 2
    workers compares the same hardware); on a cluster, one CPU each unless told otherwise."""
    if address:
        return int(os.environ.get("PLAYLISTAI_CPUS_PER_WORKER", "1"))
    return max(1, (os.cpu_count() or 1) // num_workers)


def gpus_for_workers(address: str | None, num_workers: int) -> bool:
    """One GPU per worker available? Ray must be initialised (the cluster's resources are asked)."""
    import ray

    if address:
        return ray.cluster_resources().get("GPU", 0) >= num_workers
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() >= num_workers


def run_on_ray(
    worker_cfg: dict,
    num_workers: int,
    storage_path: str,
    name: str,
    address: str | None = None,
    use_gpu: bool | None = None,
) -> RayRunResult:
    """Train on Ray; `use_gpu=None` uses GPUs when there is one per worker (`gpus_for_workers`)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from playlistai.training.worker import train_worker

    started = start_ray(address, num_workers)
    try:
        cpus = cpus_per_worker(num_workers, address)
        if use_gpu is None:
            use_gpu = gpus_for_workers(address, num_workers)
        if use_gpu:
            log.info("training on %d GPU workers", num_workers)
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={**worker_cfg, "threads": cpus},
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}
            ),
            run_config=RunConfig(
                name=name,
                storage_path=storage_path,
                checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                failure_config=FailureConfig(max_failures=0),
                logging_config=LoggingConfig(log_level=RAY_TRAIN_CONSOLE_LEVEL),
            ),
        )
        result = trainer.fit()
        checkpoint_dir = None
        if result.checkpoint is not None:
            path = Path(result.checkpoint.path)
            if path.is_dir():
                checkpoint_dir = path
            else:  # remote storage: bring the last checkpoint to local disk
                checkpoint_dir = Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix="playlistai-ckpt-")))
        return RayRunResult(summary=result.return_value or {}, checkpoint_dir=checkpoint_dir)
    finally:
        if started:
            ray.shutdown()
