"""`python -m playlistai.latest_model`: the checkpoint of the latest finished training on the splits on disk."""

import shutil
import time

import mlflow

from playlistai.latest_model import checkpoint_uris, main, splits_hash
from playlistai.tracking import configure_mlflow


def _train_run(client, experiment_id, family, data_hash, status, start_ms):
    run = client.create_run(experiment_id, start_time=start_ms,
                            tags={"stage": "train", "model_family": family, "data_hash": data_hash})
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_latest_finished_training_on_these_splits(tiny_data_dir, tmp_path, capsys):
    experiment_id = configure_mlflow()
    client = mlflow.MlflowClient()
    here = splits_hash(tiny_data_dir)
    # the splits stage tags its run with the hash training runs are tagged with
    assert client.search_runs([experiment_id], f"tags.stage = 'splits' and tags.data_hash = '{here}'")

    t = int(time.time() * 1000) + 60_000  # later than every run other tests made
    _train_run(client, experiment_id, "sasrec", here, "FINISHED", t + 1)
    sasrec = _train_run(client, experiment_id, "sasrec", here, "FINISHED", t + 2)
    _train_run(client, experiment_id, "sasrec", here, "FAILED", t + 3)            # not finished
    _train_run(client, experiment_id, "sasrec", "0" * 64, "FINISHED", t + 4)      # other splits
    gru4rec = _train_run(client, experiment_id, "gru4rec", here, "FINISHED", t + 5)

    assert checkpoint_uris(["sasrec", "gru4rec"], tiny_data_dir) == [
        f"runs:/{sasrec}/checkpoint", f"runs:/{gru4rec}/checkpoint"]
    assert main(["--data-dir", str(tiny_data_dir), "transformer,gru4rec"]) == 0
    assert capsys.readouterr().out.strip() == f"runs:/{sasrec}/checkpoint,runs:/{gru4rec}/checkpoint"
    # --run-id: the latest finished training of any model (what `make export` registers), or of those named
    assert main(["--data-dir", str(tiny_data_dir), "--run-id"]) == 0
    assert capsys.readouterr().out.strip() == gru4rec
    assert main(["--data-dir", str(tiny_data_dir), "--run-id", "sasrec"]) == 0
    assert capsys.readouterr().out.strip() == sasrec

    # the same path after the splits were rebuilt: nothing trained on them yet
    shutil.copytree(tiny_data_dir / "splits", tmp_path / "splits")
    (tmp_path / "splits" / "vocab.parquet").write_bytes(b"rebuilt")
    assert main(["--data-dir", str(tmp_path), "sasrec"]) == 2
    err = capsys.readouterr().err
    assert "no finished `train` run of sasrec on the splits in" in err and "Traceback" not in err
    assert main(["--data-dir", str(tmp_path), "--run-id"]) == 2
    err = capsys.readouterr().err
    assert "no finished `train` run on the splits in" in err and "mlflow run . -e train --env-manager local" in err

    assert main(["--data-dir", str(tmp_path / "none"), "sasrec"]) == 2
    assert "run the `splits` stage first" in capsys.readouterr().err
