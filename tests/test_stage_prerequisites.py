"""A stage that reads the splits names the exact commands that make them when they are missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from entrypoints.common import require_splits
from playlistai.data.layout import SPLITS, DataLayout

REPO = Path(__file__).resolve().parents[1]


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_the_commands_start_at_the_first_missing_stage(tmp_path):
    layout = DataLayout.of(tmp_path)
    with pytest.raises(FileNotFoundError) as exc:
        require_splits(str(tmp_path))
    assert f"run first `make data preprocess splits DATA_DIR={tmp_path}`" in str(exc.value)
    assert f"mlflow run . -e data --env-manager local -P data_dir={tmp_path} && " in str(exc.value)

    touch(layout.events)
    with pytest.raises(FileNotFoundError) as exc:
        require_splits(str(tmp_path))
    assert f"`make preprocess splits DATA_DIR={tmp_path}`" in str(exc.value)
    assert "-e data " not in str(exc.value)

    touch(layout.sessions)
    for name in SPLITS[:2]:
        touch(layout.split(name))
    with pytest.raises(FileNotFoundError) as exc:
        require_splits(str(tmp_path))
    assert f"({layout.split('test')} is missing); run first `make splits DATA_DIR={tmp_path}` " \
           f"(or `mlflow run . -e splits --env-manager local -P data_dir={tmp_path}`)" in str(exc.value)

    touch(layout.split("test"))
    touch(layout.vocab)
    require_splits(str(tmp_path))          # everything there: nothing to say


def test_evaluate_without_splits_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "entrypoints.evaluate", "--data-dir", str(tmp_path / "none")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: evaluate: no splits in {tmp_path}/none/ ({tmp_path}/none/splits/train.parquet is missing); "
        f"run first `make data preprocess splits DATA_DIR={tmp_path}/none` (or `mlflow run . -e data --env-manager "
        f"local -P data_dir={tmp_path}/none && mlflow run . -e preprocess --env-manager local -P data_dir="
        f"{tmp_path}/none && mlflow run . -e splits --env-manager local -P data_dir={tmp_path}/none`)"
    ]


def test_the_next_make_command_names_the_data_dir_even_when_make_handed_it_as_the_setting(tiny_data_dir, tmp_path):
    """`make preprocess DATA_DIR=x` exports DATA_DIR=x to the stage, so x is also the stage's setting;
    the `next:` line must still say `make splits DATA_DIR=x`, or the user's next make uses `data`."""
    import os
    import shutil

    data_dir = tmp_path / "mine"
    shutil.copytree(tiny_data_dir / "processed", data_dir / "processed")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env.update(DATA_DIR=str(data_dir), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    proc = subprocess.run([sys.executable, "-m", "entrypoints.splits"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("next: ")]
    assert line.startswith(f"next: `make train DATA_DIR={data_dir}`"), line
