"""`engine=ray` gives the pandas engine's outputs: the same files byte for byte (sessions, splits,
vocabulary), the same metrics, splits meta and MLflow datasets, on the `tiny` synthetic data, on a
sample of the DIGINETICA file and on plays made to hit every rule (duplicates, repeats, short
sessions, users too short for leave_one_out, ties in time, a column null in its first rows)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from playlistai.data import ray_engine
from playlistai.data.stages import run_data, run_preprocess, run_splits
from playlistai.tracking import stage_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DIGINETICA = Path(os.environ.get("DIGINETICA_EVENTS", REPO / "../shared/data/diginetica/events.csv.gz"))
OUTPUTS = ["processed/sessions.parquet", "splits/train.parquet", "splits/val.parquet", "splits/test.parquet",
           "splits/vocab.parquet", "splits/splits_meta.json"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def small_groups(monkeypatch):
    """Several groups even on small data, so that users, sessions and tracks are spread, and the
    merge of preprocess's group files reads each in many batches."""
    monkeypatch.setattr(ray_engine, "ROWS_PER_GROUP", 1500)
    monkeypatch.setattr(ray_engine, "MERGE_BUFFER_ROWS", 1000)
    monkeypatch.setattr(ray_engine, "MIN_MERGE_BATCH_ROWS", 50)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_both(raw: Path, tmp_path: Path, preprocess: dict | None = None, splits: dict | None = None) -> dict:
    """preprocess -> splits on a copy of `raw` with each engine; (metrics, datasets) per engine."""
    out = {}
    for engine in ("pandas", "ray"):
        data_dir = tmp_path / engine
        shutil.copytree(raw, data_dir / "raw")
        with stage_run("preprocess", {}) as pre:
            pre_metrics = run_preprocess(data_dir, engine=engine, **(preprocess or {}))
        with stage_run("splits", {}) as spl:
            split_metrics = run_splits(data_dir, engine=engine, **(splits or {}))
        client = mlflow.MlflowClient()
        datasets = {r: sorted((d.dataset.name, d.dataset.digest, d.dataset.schema, d.dataset.profile)
                              for d in client.get_run(r).inputs.dataset_inputs)
                    for r in (pre.info.run_id, spl.info.run_id)}
        for m in (pre_metrics, split_metrics):
            m.pop("stage_seconds")
        out[engine] = (pre_metrics, split_metrics, list(datasets.values()),
                       client.get_run(spl.info.run_id).data.tags["data_hash"])
    for name in OUTPUTS:
        assert sha256(tmp_path / "pandas" / name) == sha256(tmp_path / "ray" / name), name
    assert out["pandas"] == out["ray"]
    return out["pandas"][0]


def test_tiny_synthetic_data_gives_the_same_files_metrics_and_datasets(tiny_data_dir, tmp_path):
    metrics = run_both(tiny_data_dir / "raw", tmp_path)
    assert metrics["sessions"] > 100
    assert sha256(tmp_path / "ray/splits/train.parquet") == sha256(tiny_data_dir / "splits/train.parquet")


def test_a_sample_of_the_diginetica_file_gives_the_same_outputs(tmp_path):
    assert DIGINETICA.exists(), f"{DIGINETICA} is missing (set DIGINETICA_EVENTS)"
    sample = tmp_path / "sample.csv"
    with gzip.open(DIGINETICA, "rt") as f:
        sample.write_text("".join(itertools.islice(f, 4001)))
    with stage_run("data", {}):
        run_data(tmp_path / "file", source=str(sample), time_max="2042-01-01")
    metrics = run_both(tmp_path / "file" / "raw", tmp_path, splits={
        "test_frac": 0.1, "vocab_min_freq": 1, "vocab_scope": "train_val"})
    assert metrics["events_in"] == 4000


def splits_both(sessions: pd.DataFrame, tmp_path: Path, row_group_size: int | None = None, **splits) -> dict:
    """The splits stage on one sessions file with each engine: the same files, meta and metrics."""
    path = tmp_path / "sessions.parquet"
    sessions.to_parquet(path, index=False, row_group_size=row_group_size)
    out = {}
    for engine in ("pandas", "ray"):
        processed = tmp_path / engine / "processed"
        processed.mkdir(parents=True)
        shutil.copy(path, processed / "sessions.parquet")
        with stage_run("splits", {}):
            out[engine] = run_splits(tmp_path / engine, engine=engine, **splits)
        out[engine].pop("stage_seconds")
    for name in OUTPUTS[1:]:
        assert sha256(tmp_path / "pandas" / name) == sha256(tmp_path / "ray" / name), name
    assert out["pandas"] == out["ray"]
    return json.loads((tmp_path / "ray/splits/splits_meta.json").read_text())


def forbid_shuffles(monkeypatch) -> None:
    """Make the splits stage fail if it takes the shuffles and sorts of the general path."""
    import ray.data

    def refused(*args, **kwargs):
        raise AssertionError("the temporal split of a file in session order took a shuffle or a sort")

    for name in ("_split_with_shuffles", "by_groups"):
        monkeypatch.setattr(ray_engine, name, refused)
    for name in ("sort", "groupby"):
        monkeypatch.setattr(ray.data.Dataset, name, refused)


def test_the_temporal_split_of_a_preprocess_output_takes_neither_shuffle_nor_sort(tiny_data_dir, tmp_path,
                                                                                 monkeypatch):
    forbid_shuffles(monkeypatch)
    meta = splits_both(pd.read_parquet(tiny_data_dir / "processed/sessions.parquet"), tmp_path)
    assert meta["train_sessions"] > 500 and meta["val_sessions"] > 50


def windows_without_a_session_start(sessions: pd.DataFrame, rows: int) -> int:
    sid = sessions["session_id"].to_numpy()
    first = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    return int(np.sum(np.diff(np.searchsorted(first, np.r_[np.arange(0, len(sid), rows), len(sid)])) == 0))


def test_sessions_that_cross_blocks_and_row_groups_are_split_whole(tiny_data_dir, tmp_path, monkeypatch):
    """Blocks of 5 rows in row groups of 23: sessions begin in one block and end in a later one, some
    cover a row group from end to end, and the cut-offs truncate some and leave some too short."""
    forbid_shuffles(monkeypatch)
    monkeypatch.setattr(ray_engine, "SESSION_BLOCK_ROWS", 5)
    sessions = pd.read_parquet(tiny_data_dir / "processed/sessions.parquet").head(900)
    assert windows_without_a_session_start(sessions, 23) > 0
    meta = splits_both(sessions, tmp_path, row_group_size=23, val_frac=0.2, test_frac=0.2, vocab_min_freq=1)
    assert meta["events_truncated_at_cutoffs"] > 0 and meta["events_dropped_short_after_cut"] > 0


def test_a_sessions_file_out_of_session_order_takes_the_shuffles(tiny_data_dir, tmp_path, monkeypatch):
    taken, shuffles = [], ray_engine._split_with_shuffles

    def spied(*args, **kwargs):
        taken.append(1)
        return shuffles(*args, **kwargs)

    monkeypatch.setattr(ray_engine, "_split_with_shuffles", spied)
    sessions = pd.read_parquet(tiny_data_dir / "processed/sessions.parquet").head(900)
    splits_both(sessions.sample(frac=1.0, random_state=0), tmp_path, vocab_min_freq=1)
    assert taken == [1]


@pytest.mark.parametrize("disorder", ["none", "within a block", "where two blocks meet"])
def test_the_session_order_is_checked_within_each_block_and_where_blocks_meet(tiny_data_dir, tmp_path,
                                                                             monkeypatch, disorder):
    """Blocks of 100 rows: rows 200-299 reversed (block 3 finds it), or the file turned around at
    row 400, which puts row 0 at row 500, where a block begins (only the driver sees it)."""
    monkeypatch.setattr(ray_engine, "SESSION_BLOCK_ROWS", 100)
    sessions = pd.read_parquet(tiny_data_dir / "processed/sessions.parquet").head(900)
    rows = np.arange(len(sessions))
    if disorder == "within a block":
        rows[200:300] = rows[200:300][::-1]
    elif disorder == "where two blocks meet":
        rows = np.r_[rows[400:], rows[:400]]
    path = tmp_path / "sessions.parquet"
    sessions.iloc[rows].to_parquet(path, index=False)
    with ray_engine.ray_data(len(rows)):
        found = ray_engine._session_starts(path, len(rows), ray_engine.Steps("splits", out=io.StringIO()))
    if disorder != "none":
        assert found is None
        return
    ts = sessions.groupby("session_id")["ts"].min()
    assert np.array_equal(found.starts_ns, ray_engine.epoch_ns(ts))
    starts = np.flatnonzero(sessions["pos"].to_numpy() == 0)
    assert set(found.block_starts) <= set(starts) and len(found.block_starts) >= 8


def made_up_plays() -> pd.DataFrame:
    """Plays that hit every rule: exact duplicates, repeats, one-play sessions, users with one or
    two plays, plays at the same time, and a genre that is null in the first rows."""
    rng = np.random.default_rng(3)
    rows = []
    t0 = pd.Timestamp("2024-03-01", tz="UTC")
    for u in range(60):
        n = [1, 2, 3][u % 3] if u < 12 else int(rng.integers(4, 40))
        t = t0 + pd.Timedelta(minutes=int(rng.integers(0, 5000)))
        for _ in range(n):
            t += pd.Timedelta(minutes=int(rng.choice([0, 1, 3, 50, 200])))
            track = f"t{int(rng.zipf(1.6)) % 40}"
            rows.append((f"u{u:02d}", track, t, f"a{track[1:2]}", None if len(rows) < 300 else "pop"))
            if rng.random() < 0.1:
                rows.append(rows[-1])                      # an exact duplicate
            if rng.random() < 0.1:
                rows.append((f"u{u:02d}", track, t, None, "rock"))   # a repeat, also a duplicate key
    frame = pd.DataFrame(rows, columns=["user_id", "track_id", "ts", "artist_id", "genre"])
    frame = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)   # file order is not time order
    for c in ("user_id", "track_id", "artist_id", "genre"):
        frame[c] = frame[c].astype("string")
    return frame


@pytest.mark.parametrize("preprocess, splits", [
    ({"collapse_repeats": True, "min_session_len": 2, "session_gap_min": 30},
     {"strategy": "leave_one_out", "vocab_scope": "train_val", "vocab_min_freq": 1}),
    ({"min_session_len": 1, "timezone": "Asia/Tokyo"},
     {"strategy": "leave_one_out", "vocab_min_freq": 2}),
    ({"min_session_len": 3}, {"val_frac": 0.0, "test_frac": 0.3, "vocab_min_freq": 2}),
])
def test_made_up_plays_that_hit_every_rule_give_the_same_outputs(tmp_path, preprocess, splits):
    raw = tmp_path / "made_up" / "raw"
    raw.mkdir(parents=True)
    made_up_plays().to_parquet(raw / "events.parquet", index=False)
    metrics = run_both(raw, tmp_path, preprocess, splits)
    assert metrics["dropped_share_duplicates"] > 0


def test_the_entry_points_take_engine_ray_and_refuse_an_unknown_engine(tiny_data_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "raw", data_dir / "raw")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    for entry in ("preprocess", "splits"):
        cmd = ["mlflow", "run", ".", "-e", entry, "--env-manager", "local", "-P", f"data_dir={data_dir}",
               "-P", "engine=ray"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{entry}:\n{proc.stdout}\n{proc.stderr}"
        # Ray Data's bars are off: the engine says what it does, step by step, and nothing looks fatal
        steps = [line for line in proc.stderr.splitlines() if line.startswith(f"{entry} (ray): ")]
        assert any("writing " in line for line in steps), proc.stderr
        assert sum(": done in " in line for line in steps) == sum(line.endswith(" ...") for line in steps) >= 2
        assert "Traceback" not in proc.stdout + proc.stderr
    for name in OUTPUTS[:-1]:
        assert sha256(data_dir / name) == sha256(tiny_data_dir / name), name

    for entry in ("preprocess", "splits"):
        proc = subprocess.run([sys.executable, "-m", f"entrypoints.{entry}", "--data-dir", str(data_dir),
                               "--engine", "spark"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        assert proc.stderr.strip() == f"error: {entry}: engine: expected one of pandas, ray, got 'spark'"


def test_preprocess_leaves_no_group_files_behind_whether_it_succeeds_or_fails(tiny_data_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "raw", data_dir / "raw")
    with stage_run("preprocess", {}):
        run_preprocess(data_dir, engine="ray")
    sessions = data_dir / "processed/sessions.parquet"
    assert sorted(p.name for p in sessions.parent.iterdir()) == ["sessions.parquet"]
    written = sha256(sessions)
    with pytest.raises(ValueError, match="no session has 10000\\+ plays"), stage_run("preprocess", {}):
        run_preprocess(data_dir, engine="ray", min_session_len=10_000)
    assert sorted(p.name for p in sessions.parent.iterdir()) == ["sessions.parquet"]
    assert sha256(sessions) == written
