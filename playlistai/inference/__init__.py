"""Serving-side inference: the Recommender and the model package it loads."""

from playlistai.inference.package import ModelPackageError
from playlistai.inference.recommender import Recommendation, Recommender

__all__ = ["ModelPackageError", "Recommendation", "Recommender"]
