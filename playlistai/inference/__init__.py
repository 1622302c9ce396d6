"""Serving-side inference: the Recommender and the model package it loads.

The names below are imported on first use, so that `playlistai.inference.features` (the drift-feature
schema the API and the drift job share) can be imported without torch and FAISS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playlistai.inference.package import ModelPackageError
    from playlistai.inference.recommender import Recommendation, Recommender

__all__ = ["ModelPackageError", "Recommendation", "Recommender"]


def __getattr__(name: str):
    if name == "ModelPackageError":
        from playlistai.inference.package import ModelPackageError

        return ModelPackageError
    if name in ("Recommendation", "Recommender"):
        from playlistai.inference import recommender

        return getattr(recommender, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
