"""Training resume reads `train_state.pt` with `torch.load(weights_only=True)`: the state a
run saves loads back, and a crafted file, named by a run's `train_state_path` tag, runs no code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from playlistai.tracking import stage_run
from playlistai.training.stage import STATE_PATH_TAG, TrainParams, plan_training, run_train_stage
from playlistai.training.worker import META_FILE, STATE_FILE, load_train_state, plain_state, write_state_dir


class RunsCode:
    """What a malicious pickle does: unpickling it calls a function of the attacker's choice."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_state_dir(root: Path, marker: Path) -> Path:
    state = root / "epoch_001"
    state.mkdir(parents=True)
    torch.save({"format_version": 1, "epoch": 1, "model": RunsCode(marker)}, state / STATE_FILE)
    (state / META_FILE).write_text(json.dumps({"epoch": 1, "best_epoch": 1, "best_metric": 0.1}))
    return state


def test_a_crafted_state_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    state = crafted_state_dir(tmp_path / "storage", marker)
    with pytest.raises(ValueError, match=r"train_state\.pt refused: it asks to load the Python object "
                                         r"(posix|os)\.system, which a training state never holds"):
        load_train_state(state)
    assert not marker.exists()


def test_resume_from_a_run_whose_tag_names_a_crafted_file_runs_nothing(tmp_path, tiny_data_dir):
    marker = tmp_path / "code-ran"
    storage = tmp_path / "storage"
    crafted_state_dir(storage, marker)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("playlistai") or client.get_experiment_by_name("Default")
    run = client.create_run(experiment.experiment_id, tags={STATE_PATH_TAG: str(storage)})
    client.set_terminated(run.info.run_id, "FINISHED")
    params = TrainParams(data_dir=str(tiny_data_dir), d_model=16, n_layers=1, max_seq_len=20, epochs=2,
                         batch_size=128, val_max_cases=100, trainer="local", progress=False,
                         resume_from=run.info.run_id, storage_path=str(tmp_path / "new-storage"))
    with pytest.raises(ValueError, match="refused"):
        plan = plan_training(params)
        with stage_run("train", plan.run_params, tags=plan.tags, run_name=plan.run_name):
            run_train_stage(plan)
    assert not marker.exists()


def test_the_state_a_run_saves_loads_with_weights_only(tmp_path, tiny_training_data, small_model_config,
                                                       small_train_config):
    from playlistai.models import build_model
    from playlistai.training.loop import fit, seed_everything

    config = small_train_config(epochs=1)
    seed_everything(config.seed)
    model = build_model(small_model_config(tiny_training_data.vocab.size))
    saved = {}
    fit(model, tiny_training_data.train, tiny_training_data.val, config,
        item_counts=tiny_training_data.vocab.popularity(), on_epoch_end=lambda r, snapshot: saved.update(snapshot()))
    saved["history"][0]["numpy_value"] = np.float64(0.25)   # a numpy scalar is stored as a plain float
    write_state_dir(tmp_path / "epoch_001", saved, tiny_training_data.vocab, extra={})
    loaded = load_train_state(tmp_path / "epoch_001")
    assert loaded["epoch"] == 1 and type(loaded["history"][0]["numpy_value"]) is float
    for key, tensor in saved["model"].items():
        assert torch.equal(loaded["model"][key], tensor), key
    assert loaded["optimizer"]["param_groups"][0]["betas"] == saved["optimizer"]["param_groups"][0]["betas"]
    assert torch.equal(loaded["torch_rng"], saved["torch_rng"])


def test_plain_state_keeps_state_dicts_as_they_are():
    weights = torch.nn.Linear(2, 2).state_dict()
    state = {"model": weights, "history": [{"loss": np.float32(1.5)}], "betas": (0.9, 0.98)}
    plain = plain_state(state)
    assert plain["model"] is weights and plain["betas"] is state["betas"]
    assert plain["history"] == [{"loss": 1.5}] and type(plain["history"][0]["loss"]) is float
