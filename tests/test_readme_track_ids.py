"""The README's example requests use track ids the demo model knows, and its command listing the
known ids works: an example that falls back to popularity teaches the wrong thing."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_readme_track_ids_are_often_played_tracks_of_the_demo_data():
    """`make demo` trains on the `default` synthetic data of seed 42; a track enters the vocabulary
    with VOCAB_MIN_FREQ (5) plays in the training period, so 100 plays in all leaves a wide margin."""
    from playlistai.data.generate import make_world

    ids = set(re.findall(r"\bt\d{6}\b", README))
    assert ids, "the README has no example track id"
    plays = make_world("default", 42).generate()["track_id"].value_counts()
    rare = {t: int(plays.get(t, 0)) for t in ids if plays.get(t, 0) < 100}
    assert not rare, f"README track ids the demo model may not know (plays in the default data): {rare}"


def test_the_readme_command_listing_known_ids_runs(tiny_data_dir, tmp_path):
    command = next(line for line in README.splitlines() if "vocab.parquet" in line and line.startswith(".venv/bin/python"))
    (tmp_path / "data").symlink_to(tiny_data_dir)
    args = shlex.split(command)
    proc = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["index", "track_id"] and len(lines) == 21, proc.stdout
