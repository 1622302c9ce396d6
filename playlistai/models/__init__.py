"""Sequence models. Every model is a `SequenceRecommender` (see base.py) built from a ModelConfig;
checkpoint.py writes and reads them (imported on its own, not re-exported here)."""

from playlistai.models.base import SequenceRecommender
from playlistai.models.config import FAMILIES, ModelConfig, canonical_family
from playlistai.models.gru4rec import GRU4Rec
from playlistai.models.sasrec import SASRec

MODELS: dict[str, type[SequenceRecommender]] = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def build_model(config: ModelConfig) -> SequenceRecommender:
    return MODELS[canonical_family(config.family)](config)


__all__ = [
    "FAMILIES",
    "GRU4Rec",
    "MODELS",
    "ModelConfig",
    "SASRec",
    "SequenceRecommender",
    "build_model",
    "canonical_family",
]
