"""Where each stage reads and writes inside `data_dir`, and how files are written safely.

    data_dir/raw/events.parquet          stage `data`: the events contract (DESIGN.md §2)
    data_dir/raw/world/                  synthetic only: the generator's truth, for the oracle
    data_dir/processed/sessions.parquet  stage `preprocess`: sessionized events
    data_dir/splits/{train,val,test}.parquet, vocab.parquet   stage `splits`

Every write goes to a temporary path beside the target and is renamed into place, so a failing
stage never leaves a half-written file where the next stage would read it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike) -> DataLayout:
        return cls(Path(data_dir))

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def events(self) -> Path:
        return self.raw_dir / "events.parquet"

    @property
    def world_dir(self) -> Path:
        return self.raw_dir / "world"

    @property
    def processed_dir(self) -> Path:
        return self.root / "processed"

    @property
    def sessions(self) -> Path:
        return self.processed_dir / "sessions.parquet"

    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.splits_dir / f"{name}.parquet"

    @property
    def vocab(self) -> Path:
        return self.splits_dir / "vocab.parquet"

    @property
    def splits_meta(self) -> Path:
        return self.splits_dir / "splits_meta.json"

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the `{stage}` stage first (data_dir={self.root})")
        return path


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto `target`, on failure remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
