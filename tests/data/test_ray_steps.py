"""The Ray engine's progress lines: no step runs silent for longer than its interval."""

from __future__ import annotations

import io
import time

import pytest

from playlistai.data.ray_engine import Steps


def test_a_step_says_when_it_starts_while_it_runs_and_when_it_is_done():
    out = io.StringIO()
    steps = Steps("splits", every=0.05, out=out)
    with steps.step("writing train.parquet", total=1_000_000) as progress:
        progress.add(250_000)
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "splits (ray): writing train.parquet ..."
    beats = lines[1:-1]
    assert len(beats) >= 3
    assert all(b.startswith("splits (ray): writing train.parquet: ") and b.endswith(
        " so far, 250,000 of 1,000,000 rows (25%)") for b in beats), beats
    assert lines[-1].startswith("splits (ray): writing train.parquet: done in ")


def test_a_failed_step_stops_its_lines_and_does_not_say_done():
    out = io.StringIO()
    steps = Steps("preprocess", every=0.05, out=out)
    with pytest.raises(RuntimeError), steps.step("sessions"):
        raise RuntimeError("worker died")
    time.sleep(0.15)
    assert out.getvalue().splitlines() == ["preprocess (ray): sessions ..."]
