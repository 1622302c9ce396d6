"""The registry: model packages as MLflow pyfunc models, registration and the promotion gate."""

from __future__ import annotations

# a tag of a training run chosen among several (playlistai/pipeline.py sets it): how it was chosen.
# The register stage leads the gate's reason with it. Here, not in pipeline.py, because the
# pipeline sits above the subpackages and none of them imports it.
SELECTION_TAG = "selection_reason"


def load_recommender(model_uri: str, num_threads: int | None = None, item_table_dtype: str = "float32"):
    """The Recommender of a pyfunc model URI (see playlistai.registry.pyfunc.load_recommender).

    Imported on call, so `import playlistai.registry.<module>` does not pull in MLflow's pyfunc."""
    from playlistai.registry.pyfunc import load_recommender as load

    return load(model_uri, num_threads, item_table_dtype)


__all__ = ["SELECTION_TAG", "load_recommender"]
