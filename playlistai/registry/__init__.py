"""The registry: model packages as MLflow pyfunc models, registration and the promotion gate."""

from __future__ import annotations


def load_recommender(model_uri: str, num_threads: int | None = None):
    """The Recommender of a pyfunc model URI (see playlistai.registry.pyfunc.load_recommender).

    Imported on call, so `import playlistai.registry.<module>` does not pull in MLflow's pyfunc."""
    from playlistai.registry.pyfunc import load_recommender as load

    return load(model_uri, num_threads)


__all__ = ["load_recommender"]
