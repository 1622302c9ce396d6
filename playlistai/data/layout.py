"""Where each stage reads and writes inside `data_dir`.

    data_dir/raw/events.parquet          stage `data`: the events (docs/ARCHITECTURE.md, "Events")
    data_dir/raw/world/                  synthetic only: the generator's truth, for the oracle
    data_dir/processed/sessions.parquet  stage `preprocess`: sessionized events
    data_dir/splits/{train,val,test}.parquet, vocab.parquet   stage `splits`
    data_dir/windows/<data hash>-L<n>/  stage `train`: the train split's windows, built once per data
                                         version and window length (playlistai/training/windows.py)

The stages write these paths with the atomic writes of `playlistai/files.py`, so a failing stage
never leaves a half-written file where the next stage would read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    def split_files(self) -> list[Path]:
        """What training reads: the three splits and the vocabulary (their hash is the data version)."""
        return [self.split(s) for s in SPLITS] + [self.vocab]

    @property
    def windows_dir(self) -> Path:
        return self.root / "windows"

    @property
    def splits_meta(self) -> Path:
        return self.splits_dir / "splits_meta.json"

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the `{stage}` stage first (data_dir={self.root})")
        return path
