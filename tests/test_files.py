"""Atomic writes (playlistai/files.py): whole-or-nothing outputs, usual permissions, no leftovers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from playlistai.files import atomic_dir, atomic_path, stale_temporaries, write_parquet


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_written_files_and_directories_get_the_umask_permissions(tmp_path, umask_022):
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "out" / "f.parquet")
    assert (tmp_path / "out" / "f.parquet").stat().st_mode & 0o777 == 0o644    # not tempfile's 0600
    with atomic_dir(tmp_path / "splits") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "splits").stat().st_mode & 0o777 == 0o755                # not tempfile's 0700


def test_a_failure_between_two_outputs_keeps_the_old_directory_whole(tmp_path):
    target = tmp_path / "splits"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old a")
        (tmp / "b").write_text("old b")
    with pytest.raises(OSError, match="disk full"), atomic_dir(target) as tmp:
        (tmp / "a").write_text("new a")
        raise OSError("disk full")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": "old a", "b": "old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]


def test_leftovers_of_a_dead_writer_are_removed_by_the_next_write(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".raw.tmp.{host}.{dead_pid()}.abc123"
    (dead / "world").mkdir(parents=True)
    (dead / "events.parquet").write_bytes(b"half a file")
    dead_file = tmp_path / f".f.parquet.tmp.{host}.{dead_pid()}.xyz789"
    dead_file.write_bytes(b"half")
    live = tmp_path / f".raw.tmp.{host}.{os.getppid()}.def456"      # a writer that still runs
    live.mkdir()
    other_host = tmp_path / f".raw.tmp.elsewhere.example.{dead_pid()}.ghi789"   # cannot be checked
    other_host.mkdir()
    assert stale_temporaries(tmp_path / "raw") == [dead]

    with atomic_dir(tmp_path / "raw") as tmp:
        (tmp / "events.parquet").write_text("complete")
    with atomic_path(tmp_path / "f.parquet") as tmp:
        tmp.write_text("complete")
    assert not dead.exists() and not dead_file.exists()
    assert live.exists() and other_host.exists()
    assert (tmp_path / "raw" / "events.parquet").read_text() == "complete"


def test_a_killed_writer_leaves_the_old_file_and_its_temporary_is_swept(tmp_path):
    """SIGKILL in the middle of a write: the target keeps its old content, and the next write cleans up."""
    target = tmp_path / "events.parquet"
    target.write_text("old")
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from playlistai.files import atomic_path\n"
        f"with atomic_path(Path({str(target)!r})) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -9
    assert target.read_text() == "old"
    assert len(stale_temporaries(target)) == 1
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet"]
