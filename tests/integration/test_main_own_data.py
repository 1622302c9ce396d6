"""A user's own log file through the whole pipeline in one command: `mlflow run . -e main -P source=...`
reads it with the data stage's params into a data_dir of its own (never the demo's `data/`), warns
when it is too small to evaluate on, and ends in a registered model."""

from __future__ import annotations

import pandas as pd
import pytest

from entrypoints.common import default_data_dir, stage_command
from playlistai.pipeline import tiny_data_warning
from tests.integration.test_bare_mlflow_run import bare_env, bare_run, clone  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("source", "expected"), [
    ("synthetic", "data"),
    ("", "data"),
    ("/home/me/plays.csv", "data/plays"),
    ("/home/me/plays.csv.gz", "data/plays"),
    ("listens 2024.tsv", "data/listens-2024"),
    ("/x/userid-timestamp-artid-artname-traid-traname.tsv", "data/userid-timestamp-artid-artname-traid-traname"),
    ("/x/raw.parquet", "data/raw-data"),        # not the layout's own folder names
    ("/x/splits.csv", "data/splits-data"),
])
def test_a_users_file_gets_a_data_dir_of_its_own(source, expected):
    assert default_data_dir(source, "data") == expected


def test_the_next_command_carries_a_custom_data_dir():
    assert stage_command("preprocess", "data", "data") == "make preprocess"
    assert stage_command("preprocess", "data/plays", "data") == "make preprocess DATA_DIR=data/plays"
    assert stage_command("evaluate", "data/plays", "data", model_uri="runs:/x/checkpoint") == (
        "mlflow run . -e evaluate --env-manager local -P data_dir=data/plays -P model_uri=runs:/x/checkpoint")


def test_tiny_data_is_named_as_such_and_enough_data_is_not():
    warning = tiny_data_warning({"vocab_size": 37.0, "test_sessions": 8.0})
    assert warning.startswith("tiny data: 37 tracks in the vocabulary and 8 test sessions")
    assert tiny_data_warning({"vocab_size": 6088.0, "test_sessions": 1_900.0}) is None
    assert tiny_data_warning({"vocab_size": 6088.0, "test_sessions": 12.0}) is not None


def own_log_file(directory, tiny_data_dir) -> str:
    """The tiny synthetic plays as a user's CSV: other column names, ISO times, a smaller log."""
    events = pd.read_parquet(tiny_data_dir / "raw" / "events.parquet")
    users = sorted(events["user_id"].unique())[:40]
    events = events[events["user_id"].isin(users)]
    frame = pd.DataFrame({"listener": events["user_id"], "song": events["track_id"],
                          "played_at": events["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "artist": events["artist_id"], "style": events["genre"]})
    path = directory / "my plays.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.slow
def test_main_on_a_users_file_writes_into_its_own_data_dir(clone, tiny_data_dir, tmp_path):  # noqa: F811
    source = own_log_file(tmp_path, tiny_data_dir)
    params = {"source": source, "user_col": "listener", "track_col": "song", "ts_col": "played_at",
              "artist_col": "artist", "genre_col": "style", "models": "gru4rec", "epochs": 1, "d_model": 32,
              "trainer": "local", "baselines": "false", "n_resamples": 20}
    proc = bare_run(clone, "main", params, bare_env(MLFLOW_EXPERIMENT_NAME="own-data"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Traceback" not in out

    own = clone / "data" / "my-plays"
    assert (own / "raw" / "events.parquet").is_file() and (own / "splits" / "vocab.parquet").is_file()
    assert not (clone / "data" / "raw").exists() and not (clone / "data" / "splits").exists(), \
        "the demo's data/ must stay untouched"
    assert len(pd.read_parquet(own / "raw" / "events.parquet")) == len(pd.read_csv(source))

    # 40 users of the tiny data: too small to evaluate on, and said so (by splits, and by main at its end)
    assert "warning: splits: tiny data: " in proc.stderr
    assert "warning: main: tiny data: " in proc.stderr
    # one summary block at the end: the figures, the (absent) choice, the gate, where to look next
    block = proc.stdout[proc.stdout.index("PlayListAI pipeline done in "):]
    assert "  gru4rec  nDCG@10 " in block and "chosen: gru4rec, the only model trained" in block
    assert "on test: no baseline evaluated (baselines=false)" in block
    assert "gate: promoted v1: only gru4rec was trained: no choice made; there is no production version yet" in block
    assert "curl -s localhost:8088/continue -H 'content-type: application/json' -d '{\"tracks\": [" in block
    # the stages main runs print no "next:" of their own; main prints one, last
    nexts = [line for line in proc.stdout.splitlines() if line.startswith("next: ")]
    assert nexts == ["next: `make api`  or  `mlflow ui --backend-store-uri sqlite:///mlflow.db`"], nexts

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db")
    experiment = client.get_experiment_by_name("own-data")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    main_run, data_run = by_stage["main"], by_stage["data"]
    # (MLflow's launcher logs a value with a space shell-quoted)
    assert main_run.data.params["source"].strip("'") == source
    assert data_run.data.params["source"].strip("'") == source and data_run.data.params["user_col"] == "listener"
    assert data_run.data.params["data_dir"] == str(own.relative_to(clone))
    assert main_run.data.tags["data_warning"].startswith("tiny data: ")
    assert main_run.data.tags["mlflow.note.content"] in proc.stdout
    assert {"stage_seconds/data", "stage_seconds/train_gru4rec"} <= set(main_run.data.metrics)
    assert client.get_model_version_by_alias("playlistai", "production").run_id == by_stage["register"].info.run_id
