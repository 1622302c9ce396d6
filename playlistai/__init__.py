"""PlayListAI: playlist continuation with sequence models, tracked in MLflow."""

__version__ = "0.1.0"
