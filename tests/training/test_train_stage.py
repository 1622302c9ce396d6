"""The `train` entry point: params, MLflow run contents, checkpoint artifact, resume by run id."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from entrypoints.train import app
from playlistai.models.checkpoint import load_checkpoint
from playlistai.training.stage import TrainParams

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--d-model", "16", "--n-layers", "1", "--max-seq-len", "20", "--batch-size", "128",
         "--val-max-cases", "300", "--progress", "false", "--trainer", "local"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "lstm"], "unknown model 'lstm'"),
        (["--epochs", "-1"], "epochs must be >= 1, got -1"),
        (["--d-model", "30", "--n-heads", "4"], "n_heads (4) must divide d_model (30)"),
        (["--trainer", "spark"], "trainer must be one of"),
        (["--epochs", "two"], "epochs: expected an integer"),
    ],
)
def test_bad_params_fail_before_training_with_a_message(args, message, tmp_path):
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "storage").exists()


def test_bad_params_exit_non_zero_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "entrypoints.train", "--model", "lstm", "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown model 'lstm'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_splits_are_reported(tmp_path):
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert f"no splits in {tmp_path / 'nowhere'}/" in result.output
    assert f"run first `make data preprocess splits DATA_DIR={tmp_path / 'nowhere'}`" in result.output


def test_params_default_from_settings():
    from playlistai.config import load_settings

    params = TrainParams.from_settings(load_settings(MODEL_NAME="transformer", MODEL_D=64, MAX_SEQ_LEN=30))
    assert (params.model, params.d_model, params.max_seq_len) == ("sasrec", 64, 30)
    assert TrainParams.from_settings(load_settings(), model="gru4rec").model == "gru4rec"


def _run_by_id(run_id):
    return mlflow.tracking.MlflowClient().get_run(run_id)


def _train_cli(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"checkpoint runs:/([0-9a-f]{32})/checkpoint", result.output).group(1)
    return run_id, result.output


@pytest.mark.usefixtures("one_thread")
def test_local_run_logs_params_curves_and_a_loadable_checkpoint(tiny_data_dir, tmp_path):
    run_id, output = _train_cli(
        ["--model", "gru4rec", "--epochs", "2", "--data-dir", str(tiny_data_dir),
         "--storage-path", str(tmp_path / "storage"), *SMALL]
    )
    run = _run_by_id(run_id)
    assert run.info.status == "FINISHED"
    for name in ("model", "d_model", "n_layers", "n_heads", "dropout", "max_seq_len", "epochs", "batch_size", "lr",
                 "weight_decay", "loss", "num_negatives", "label_smoothing", "use_context", "num_workers",
                 "trainer", "seed", "patience", "data_dir", "resume_from"):
        assert name in run.data.params, name
    assert run.data.params["model"] == "gru4rec"
    tags = run.data.tags
    assert tags["model_family"] == "gru4rec" and len(tags["data_hash"]) == 64 and "git_commit" in tags
    client = mlflow.tracking.MlflowClient()
    for key in ("train_loss", "val_recall_at_20", "val_ndcg_at_10", "lr", "epoch_seconds", "train_events_per_second",
                "worker_peak_rss_mb"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    rss = [m.value for m in client.get_metric_history(run_id, "worker_peak_rss_mb")]
    assert 100 < rss[0] <= rss[1]                 # a peak (MB) can only grow
    assert "best_val_ndcg_at_10" in run.data.metrics

    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/checkpoint", dst_path=str(tmp_path / "dl"))
    model, vocab, config = load_checkpoint(local)
    assert config["model_config"]["family"] == "gru4rec" and config["data_hash"] == tags["data_hash"]
    assert model.score_batch(torch.tensor([[0, 1, 2]]), torch.tensor([3]), torch.tensor([1])).shape == (1, vocab.size)
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/training_curves.png"]
    # the neighbour mix was fitted after training; the checkpoint holds the neighbours iff it kept them
    metrics = run.data.metrics
    assert metrics["mix_fit_cases"] > 0 and "mix_val_ndcg_at_10" in metrics
    assert metrics["mix_val_ndcg_at_10"] >= metrics["best_val_ndcg_at_10"] - 0.05   # fitted on more cases
    assert model.mixes_neighbours == (metrics["neighbour_weight"] > 0)
    assert float(model.neighbour_weight) == pytest.approx(metrics["neighbour_weight"])
    assert "session neighbours" in output


@pytest.mark.usefixtures("one_thread")
def test_resume_from_a_run_id_continues_its_epochs(tiny_data_dir, tmp_path):
    common = ["--data-dir", str(tiny_data_dir), "--storage-path", str(tmp_path / "storage"), *SMALL]
    first, _ = _train_cli(["--epochs", "1", *common])
    second, _ = _train_cli(["--epochs", "2", "--resume-from", first, *common])
    client = mlflow.tracking.MlflowClient()
    assert [m.step for m in client.get_metric_history(second, "train_loss")] == [2]     # epoch 1 not redone
    assert _run_by_id(second).data.metrics["epochs_run"] == 2
    assert _run_by_id(second).data.tags["resumed_from"].endswith("epoch_001")


@pytest.mark.usefixtures("one_thread")
def test_resume_ends_the_killed_run_it_resumes(tiny_data_dir, tmp_path):
    """A SIGKILLed training run stays RUNNING (nothing could end it); resuming it ends it as KILLED."""
    import socket

    from playlistai.tracking import ENDED_BY_TAG, PROCESS_TAG

    common = ["--data-dir", str(tiny_data_dir), "--storage-path", str(tmp_path / "storage"), *SMALL]
    first, _ = _train_cli(["--epochs", "1", *common])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client = mlflow.tracking.MlflowClient()
    client.update_run(first, status="RUNNING")                     # what a SIGKILL leaves behind
    client.set_tag(first, PROCESS_TAG, f"{socket.gethostname()}:{gone.pid}")
    second, _ = _train_cli(["--epochs", "2", "--resume-from", first, *common])
    killed = _run_by_id(first)
    assert killed.info.status == "KILLED" and second in killed.data.tags[ENDED_BY_TAG]
    assert _run_by_id(second).data.tags["resumed_from_run"] == first
    assert _run_by_id(second).info.status == "FINISHED"
