"""The `register` stage: package a trained run, register it, and run the promotion gate.

Two ways in:
- `run_id` (or `model_uri` of a checkpoint): a new version. The checkpoint is packaged with its
  FAISS index, popularity table and drift reference (packaging.py), logged as a pyfunc model in
  this run, registered with its tags and the `challenger` alias, then gated.
- `version`: an existing version is gated again (`promote=auto|never`) or moved into production
  by hand (`promote=force`, which is how a rollback is done).

`run_register` expects an active MLflow run (the entry point opens it). The decision is logged as
the run artifact `gate/decision.json`, as run tags and metrics, and as tags of the version. A
training run that `main` chose among several carries the validation comparison it was chosen on
(the tag `selection_reason`); the decision's reason begins with it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

import playlistai
from playlistai.config import get_settings
from playlistai.data.layout import DataLayout
from playlistai.inference.ann import DEFAULT_TARGET_OVERLAP
from playlistai.inference.ann import INDEX_TYPES as ANN_INDEX_TYPES
from playlistai.model_ref import ModelRef
from playlistai.models.checkpoint import find_checkpoint_dir
from playlistai.params import StageParams, param
from playlistai.registry import SELECTION_TAG, promotion
from playlistai.registry.gate import compare_models, split_metrics
from playlistai.registry.packaging import build_package
from playlistai.registry.pyfunc import load_recommender, log_package_model
from playlistai.tracking import files_hash, git_commit

CHECKPOINT_ARTIFACT = "checkpoint"          # where a training run logs its checkpoint


@dataclass
class RegisterParams(StageParams):
    """The `register` entry point's params (MLproject)."""

    run_id: str = param("", "training run whose checkpoint/ artifact becomes a new version")
    model_uri: str = param("", "instead of run_id: a checkpoint directory or artifact URI")
    version: str = param("", "instead of run_id: an existing version to gate or roll back to")
    promote: str = param("auto", "auto (gate decides) | force (move the alias) | never")
    data_dir: str = param("data", "defaults to DATA_DIR; its test split is the gate's", setting="DATA_DIR")
    n_resamples: int = param(1000, "bootstrap resamples of the gate", minimum=10)
    confidence: float = param(0.95, "confidence of the gate's interval")
    seed: int = param(0, minimum=0)
    ann_index: str = param("auto", " | ".join(("auto", *ANN_INDEX_TYPES)))
    target_overlap: float = param(DEFAULT_TARGET_OVERLAP, "FAISS top-20 vs exact top-20 overlap to tune for")


def fetch_checkpoint(run_id: str, model_uri: str, dst: Path) -> Path:
    ref = ModelRef.parse(model_uri) if model_uri else ModelRef.of_run(run_id, CHECKPOINT_ARTIFACT)
    if ref.is_local:
        path = Path(ref.uri)
        if not path.exists():
            raise FileNotFoundError(f"model_uri {ref.uri!r}: no such checkpoint directory")
        return find_checkpoint_dir(path)
    try:
        local = ref.fetch(dst)
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"cannot download the checkpoint {ref.uri!r}: {exc.message}") from None
    return find_checkpoint_dir(local)


def data_hash(data_dir: Path) -> str:
    layout = DataLayout.of(data_dir)
    files = [layout.split(s) for s in ("train", "val", "test")] + [layout.vocab]
    return files_hash([layout.require(f, "splits") for f in files])


def _train_run_info(client: mlflow.MlflowClient, run_id: str) -> dict:
    if not run_id:
        return {}
    run = client.get_run(run_id)
    return {**run.data.params, **run.data.tags}


def run_register(
    data_dir: str | Path,
    run_id: str = "",
    model_uri: str = "",
    version: str = "",
    promote: str = "auto",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    ann_index: str = "auto",
    target_overlap: float = DEFAULT_TARGET_OVERLAP,
    model_name: str | None = None,
    alias: str | None = None,
) -> dict:
    settings = get_settings()
    model_name = model_name or settings.REGISTERED_MODEL_NAME
    alias = alias or settings.MODEL_ALIAS
    data_dir = Path(data_dir)
    if promote not in promotion.PROMOTE_MODES:
        raise ValueError(f"promote must be one of {', '.join(promotion.PROMOTE_MODES)}, got {promote!r}")
    if bool(version) == bool(run_id or model_uri):
        raise ValueError("give either run_id (or model_uri) to register a new version, or version to gate/roll back one")
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("run_register needs an active MLflow run")
    summary: dict = {"model_name": model_name, "alias": alias}

    with tempfile.TemporaryDirectory(prefix="playlistai-register-") as tmp:
        tmp = Path(tmp)
        recommenders: dict[str, object] = {}

        def recommender_of(v: str):
            if v not in recommenders:
                recommenders[v] = load_recommender(ModelRef.of_version(model_name, v).uri)
            return recommenders[v]

        if version:
            try:
                mv = client.get_model_version(model_name, str(version))
            except mlflow.exceptions.MlflowException:
                raise ValueError(f"{model_name} has no version {version}") from None
            version = str(mv.version)
            summary["metrics"] = {k: float(v) for k, v in mv.tags.items() if k.startswith("test_")}
        else:
            train_info = _train_run_info(client, run_id)
            checkpoint = fetch_checkpoint(run_id, model_uri, tmp / "download")
            package_dir = tmp / "package"
            source = {"train_run_id": run_id,
                      "checkpoint_uri": model_uri or ModelRef.of_run(run_id, CHECKPOINT_ARTIFACT).uri}
            info = build_package(checkpoint, data_dir, package_dir, ann_index=ann_index,
                                 target_overlap=target_overlap, source=source)
            mlflow.log_params({**info["ann"].log_params(), "model_family": info["model_family"],
                               "catalog_size": info["catalog_size"]})
            from playlistai.inference import Recommender

            recommender = Recommender.from_directory(package_dir)
            metrics = split_metrics(recommender.model, recommender.vocab, data_dir)
            mlflow.log_metrics({**metrics, "ann_overlap_at_20": info["ann"].overlap_at_20,
                                "package_bytes": info["package_bytes"]})
            model_info = log_package_model(package_dir, metadata={
                "model_family": info["model_family"], "playlistai_version": playlistai.__version__, **source,
            })
            tags = {
                "model_family": info["model_family"],
                "data_hash": train_info.get("data_hash") or data_hash(data_dir),
                "git_commit": train_info.get("git_commit") or git_commit(),
                "train_run_id": run_id or "",
                "register_run_id": active.info.run_id,
                "playlistai_version": playlistai.__version__,
                "ann_index_type": info["ann"].index_type,
                "ann_overlap_at_20": f"{info['ann'].overlap_at_20:.4f}",
                **{k: f"{v:.6g}" for k, v in metrics.items()},
            }
            mv = promotion.register_version(client, model_name, model_info.model_uri, tags)
            version = str(mv.version)
            recommender.model_version = version
            recommenders[version] = recommender
            summary["metrics"] = metrics
            summary["ann"] = info["ann"].to_dict()

        def compare(challenger: str, production: str):
            a, b = recommender_of(challenger), recommender_of(production)
            return compare_models(a.model, a.vocab, b.model, b.vocab, data_dir,
                                  n_resamples=n_resamples, confidence=confidence, seed=seed)

        selection = _train_run_info(client, run_id).get(SELECTION_TAG, "")
        decision = promotion.decide_and_promote(client, model_name, alias, version, promote, compare,
                                                selection=selection)

    summary.update({"version": version, "decision": decision.as_dict()})
    mlflow.set_tags({
        "registered_model": model_name,
        "registered_version": version,
        "gate_decision": decision.decision,
        "gate_reason": decision.reason[:5000],
        f"{alias}_version": decision.production_after or "none",
    })
    gate_metrics = {"gate_promoted": float(decision.promoted), "registered_version": float(version),
                    "gate_attempts": float(decision.attempts), "gate_lock_wait_s": float(decision.lock_wait_s)}
    for key in ("challenger", "production", "mean_diff", "low", "high", "p_value"):
        if decision.comparison and decision.comparison.get(key) is not None:
            gate_metrics[f"gate_{key}"] = float(decision.comparison[key])
    mlflow.log_metrics(gate_metrics)
    mlflow.log_text(json.dumps(summary, indent=2, sort_keys=True, default=str), "gate/decision.json")
    return summary
