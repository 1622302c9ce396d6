"""The product checkpoint: what registry packaging and serving load.

    directory/model.pt      the model's state_dict
    directory/config.json   {"format_version", "model_config": ModelConfig.to_dict(), **extra}
    directory/vocab.json    the Vocabulary the model was trained on (index i = embedding row i)
    directory/neighbours.npz  the training sessions of its session neighbours, when it mixes them in

A training run logs this directory as the MLflow artifact `checkpoint/`, so
`runs:/<run_id>/checkpoint` downloads to exactly this layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from playlistai.data.vocab import Vocabulary
from playlistai.files import atomic_path
from playlistai.models import ModelConfig, SequenceRecommender, build_model
from playlistai.models.neighbours import SessionNeighbours

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
NEIGHBOURS_FILE = "neighbours.npz"


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds one that cannot be read."""


def save_checkpoint(
    directory: str | Path,
    model: SequenceRecommender,
    vocab: Vocabulary,
    extra: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the files (each atomically). `state_dict` overrides the model's own weights, e.g. the
    best epoch's weights kept in memory while the model has moved on."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if vocab.size != model.config.vocab_size:
        raise ValueError(f"vocabulary has {vocab.size} rows (PAD included), model expects {model.config.vocab_size}")
    extra = dict(extra or {})
    clash = {"format_version", "model_config"} & set(extra)
    if clash:
        raise ValueError(f"extra may not set {sorted(clash)}")
    config = {"format_version": FORMAT_VERSION, "model_config": model.config.to_dict(), **extra}
    with atomic_path(directory / MODEL_FILE) as tmp:
        torch.save(state_dict if state_dict is not None else model.state_dict(), tmp)
    with atomic_path(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    with atomic_path(directory / VOCAB_FILE) as tmp:
        vocab.to_json(tmp)
    if model.neighbours is not None:
        with atomic_path(directory / NEIGHBOURS_FILE) as tmp:
            model.neighbours.save(tmp)
    else:
        (directory / NEIGHBOURS_FILE).unlink(missing_ok=True)
    return directory


def find_checkpoint_dir(root: str | Path) -> Path:
    """A downloaded artifact tree holds the checkpoint at its root or below (inside a pyfunc model)."""
    root = Path(root)
    if (root / MODEL_FILE).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(MODEL_FILE))
    if not found:
        raise FileNotFoundError(f"no checkpoint ({MODEL_FILE}) found under {root}")
    return found[0]


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu"):
    """-> (model in eval mode, vocabulary, config dict). Raises CheckpointError naming the bad file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    missing = [f for f in (MODEL_FILE, CONFIG_FILE, VOCAB_FILE) if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is missing {', '.join(missing)}")

    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
        model_config = ModelConfig.from_dict(config["model_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a model config: {exc}") from None

    path = directory / VOCAB_FILE
    try:
        vocab = Vocabulary.from_json(path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a vocabulary: {exc}") from None
    if vocab.size != model_config.vocab_size:
        raise CheckpointError(
            f"{path} has {vocab.size} rows (PAD included) but {CONFIG_FILE} says vocab_size={model_config.vocab_size}"
        )

    path = directory / MODEL_FILE
    model = build_model(model_config)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path} is corrupt or does not match {CONFIG_FILE}: {exc}") from None

    path = directory / NEIGHBOURS_FILE
    if path.is_file():
        try:
            model.neighbours = SessionNeighbours.load(path)
        except Exception as exc:  # numpy raises zip, key, value and OS errors for a bad file
            raise CheckpointError(f"{path} is corrupt or not a neighbours file: {exc}") from None
        if model.neighbours.vocab_size != model_config.vocab_size:
            raise CheckpointError(
                f"{path} covers {model.neighbours.vocab_size} tracks, {CONFIG_FILE} says vocab_size={model_config.vocab_size}"
            )
    model.eval()
    return model, vocab, config
