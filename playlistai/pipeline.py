"""The whole pipeline as one MLflow run: data -> preprocess -> splits -> train each model ->
evaluate each (with the baselines) -> register the best -> promotion gate.

Each stage is the project's own entry point, launched with `mlflow.projects.run` from inside the
parent run, so MLflow records it as a child run with its own params, metrics and artifacts, in
exactly the form a user gets from `mlflow run . -e <stage>`; the parent keeps the summary (each
model's test metrics, the chosen model, the registered version and the gate's decision).
Stages run in subprocesses with the current environment (`env_manager="local"`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import ExecutionException

from playlistai.params import StageParams, param

SELECTION_METRIC = "test_ndcg_at_10"
# the stages `main` runs see this in their environment (entrypoints.common.IN_PIPELINE_ENV): their next
# step is the pipeline's, so they print no "next:" line of their own
IN_PIPELINE_ENV = "PLAYLISTAI_IN_PIPELINE"
# below these, a dataset gives metrics too noisy to choose a model by (wide intervals, few cases)
MIN_VOCAB_TRACKS = 100
MIN_TEST_SESSIONS = 100


class PipelineError(RuntimeError):
    """A stage failed; the message names it and its run."""


@dataclass
class MainParams(StageParams):
    """The `main` entry point's params (MLproject); 0, -1 and "" leave a value to the stage that takes it."""

    size: str = param("default", "synthetic dataset size: tiny | default | large")
    seed: int = param(42, minimum=0)
    data_dir: str = param("", "defaults to DATA_DIR, or data/<file name> for a source file")
    source: str = param("synthetic", "'synthetic' or the path of a log file (the data stage's source)")
    format: str = param("auto", "auto | csv | tsv | parquet | lastfm1k (a source file's format)")
    user_col: str = param("user_id")
    track_col: str = param("track_id")
    ts_col: str = param("ts")
    artist_col: str = param("artist_id")
    genre_col: str = param("genre")
    time_unit: str = param("auto", "auto | s | ms | iso")
    models: str = param("sasrec,gru4rec", "models to train, comma-separated; the best is registered")
    epochs: int = param(0, "0 = the train stage's default", minimum=0)
    num_workers: int = param(0, "Ray Train workers; 0 = the train stage's default", minimum=0)
    trainer: str = param("", "ray | local; empty = the train stage's default")
    d_model: int = param(0, "0 = the train stage's default (MODEL_D)", minimum=0)
    batch_size: int = param(0, "0 = the train stage's default", minimum=0)
    patience: int = param(-1, "-1 = the train stage's default", minimum=-1)
    baselines: bool = param(True, "evaluate the baselines beside the models")
    promote: str = param("auto", "auto | force | never (the register stage's gate)")
    n_resamples: int = param(1000, "bootstrap resamples (evaluation and gate)", minimum=10)

    def columns(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ("user_col", "track_col", "ts_col", "artist_col", "genre_col")}


def parse_models(value: str | Sequence[str]) -> list[str]:
    from playlistai.models.config import canonical_family  # imports torch: only when the names are checked

    names = value.split(",") if isinstance(value, str) else list(value)
    models = list(dict.fromkeys(canonical_family(n) for n in names if str(n).strip()))
    if not models:
        raise ValueError("models: name at least one of sasrec, gru4rec")
    return models


def tiny_data_warning(splits_metrics: Mapping[str, float]) -> str | None:
    """One line when the splits are too small for the evaluation to mean much, else None."""
    tracks = int(splits_metrics.get("vocab_size", 0))
    test_sessions = int(splits_metrics.get("test_sessions", 0))
    if tracks >= MIN_VOCAB_TRACKS and test_sessions >= MIN_TEST_SESSIONS:
        return None
    return (f"tiny data: {tracks:,} tracks in the vocabulary and {test_sessions:,} test sessions (under "
            f"{MIN_VOCAB_TRACKS:,} and {MIN_TEST_SESSIONS:,}): the models will train, but their test metrics "
            f"will have wide confidence intervals and comparisons between them will be unreliable; a log with more "
            f"users and plays (or a lower vocab_min_freq) gives metrics to trust")


def _as_param(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def run_stage(project_uri: str, entry_point: str, params: Mapping, run_name: str) -> str:
    """Run one entry point as a child of the active run; return its run id."""
    parent = mlflow.active_run()
    t0 = time.perf_counter()
    previous = os.environ.get(IN_PIPELINE_ENV)
    os.environ[IN_PIPELINE_ENV] = "1"     # the stage's process inherits it
    try:
        submitted = mlflow.projects.run(
            project_uri,
            entry_point=entry_point,
            parameters={k: _as_param(v) for k, v in params.items() if v is not None and v != ""},
            env_manager="local",
            experiment_id=parent.info.experiment_id if parent else None,
            run_name=run_name,
            synchronous=True,
        )
    except ExecutionException as exc:
        raise PipelineError(f"stage `{run_name}` failed: {exc}") from None
    finally:
        if previous is None:
            os.environ.pop(IN_PIPELINE_ENV, None)
        else:
            os.environ[IN_PIPELINE_ENV] = previous
    # the stage names its run after itself; the pipeline's name says which model it was for
    mlflow.MlflowClient().set_tag(submitted.run_id, "mlflow.runName", run_name)
    # grouped under one prefix, so that MLflow's UI keeps them apart from the models' headline metrics
    mlflow.log_metric(f"stage_seconds/{run_name.replace('-', '_')}", time.perf_counter() - t0)
    return submitted.run_id


def run_pipeline(
    *,
    data_dir: str,
    size: str = "default",
    seed: int = 42,
    models: Sequence[str] = ("sasrec", "gru4rec"),
    epochs: int | None = None,
    num_workers: int | None = None,
    trainer: str | None = None,
    train_params: Mapping | None = None,
    baselines: bool = True,
    promote: str = "auto",
    n_resamples: int = 1000,
    project_uri: str = ".",
    data_params: Mapping | None = None,
) -> dict:
    """Run every stage under the active (parent) run; return the summary it logs.

    `data_params` go to the `data` stage beside size, seed and data_dir: `source` (a user's log file
    instead of the synthetic data) and its reading params (format, columns, time_unit). Splits too
    small to evaluate on (`tiny_data_warning`; the splits stage prints it) are the summary's and the
    run's `data_warning`."""
    client = mlflow.MlflowClient()
    run_stage(project_uri, "data", {"size": size, "seed": seed, "data_dir": data_dir, **(data_params or {})}, "data")
    run_stage(project_uri, "preprocess", {"data_dir": data_dir}, "preprocess")
    splits_run = run_stage(project_uri, "splits", {"data_dir": data_dir}, "splits")
    data_warning = tiny_data_warning(client.get_run(splits_run).data.metrics)
    if data_warning:
        mlflow.set_tag("data_warning", data_warning)

    trained: dict[str, str] = {}
    for model in models:
        params = {"model": model, "data_dir": data_dir, "seed": seed, "epochs": epochs,
                  "num_workers": num_workers, "trainer": trainer, **(train_params or {})}
        trained[model] = run_stage(project_uri, "train", params, f"train-{model}")

    results: dict[str, dict[str, float]] = {}
    for i, (model, train_run) in enumerate(trained.items()):
        # the baselines do not depend on the model: the first evaluation reports them once
        eval_run = run_stage(project_uri, "evaluate", {
            "model_uri": f"runs:/{train_run}/checkpoint", "data_dir": data_dir, "split": "test",
            "baselines": "true" if baselines and i == 0 else "false", "n_resamples": n_resamples,
        }, f"evaluate-{model}")
        metrics = client.get_run(eval_run).data.metrics
        if SELECTION_METRIC not in metrics:
            raise PipelineError(f"evaluate-{model} (run {eval_run}) logged no {SELECTION_METRIC}")
        results[model] = {k: metrics[k] for k in ("test_ndcg_at_10", "test_recall_at_20", "test_mrr_at_20")
                          if k in metrics}
        mlflow.log_metrics({f"{model}_{k}": v for k, v in results[model].items()})

    best = max(results, key=lambda m: results[m][SELECTION_METRIC])
    mlflow.set_tags({"best_model": best, "best_train_run_id": trained[best]})
    register_run = run_stage(project_uri, "register", {
        "run_id": trained[best], "data_dir": data_dir, "promote": promote, "n_resamples": n_resamples,
    }, "register")
    reg = client.get_run(register_run).data
    summary = {
        "models": results,
        "best_model": best,
        "train_runs": trained,
        "register_run_id": register_run,
        "registered_version": reg.tags.get("registered_version"),
        "gate_decision": reg.tags.get("gate_decision"),
        "gate_reason": reg.tags.get("gate_reason"),
        "data_dir": str(data_dir),
        "data_warning": data_warning,
    }
    mlflow.set_tags({
        "registered_version": summary["registered_version"] or "",
        "gate_decision": summary["gate_decision"] or "",
        "gate_reason": (summary["gate_reason"] or "")[:5000],
    })
    mlflow.log_dict(summary, "pipeline/summary.json")
    return summary
