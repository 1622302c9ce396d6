"""Start-up cost: a stage imports only what its own work needs (BENCHMARKS.md, "Stage start-up").

torch costs 1-2 s to import (more on a busy machine), Ray and alibi-detect more; the data stages
use none of them, `main` only launches the stages that do, and `make` launches each stage through
`mlflow.projects`, not through the `mlflow` command (which imports MLflow's server first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "alibi_detect", "tensorflow", "faiss")


def imported_modules(*args: str) -> set[str]:
    """Top-level packages a fresh interpreter imports to run `python -X importtime <args>`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("stage", ["data", "preprocess", "splits", "drift", "main"])
def test_stages_that_do_not_train_import_no_torch_ray_or_alibi_detect(stage):
    heavy = imported_modules("-c", f"import entrypoints.{stage}") & set(HEAVY)
    assert not heavy, f"entrypoints.{stage} imports {sorted(heavy)} at start-up"


def test_the_make_prestep_reads_settings_without_importing_mlflow():
    modules = imported_modules("-m", "playlistai.tracking", "--shell")
    assert "mlflow" not in modules and "pandas" not in modules, sorted(modules & {"mlflow", "pandas"})


def test_the_make_launcher_does_not_import_mlflows_server_or_torch():
    code = ("import sys, playlistai.launch, mlflow.projects; "
            "print(sorted(m for m in ('mlflow.server', 'mlflow.cli', 'mlflow.assistant', 'torch', 'ray') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
