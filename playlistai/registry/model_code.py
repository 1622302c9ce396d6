"""The pyfunc model as code (MLflow "models from code"): MLflow stores this file with each logged
model and runs it to build the model object, so no model ever holds pickled Python objects.

It names the installed `PlaylistAIModel` and nothing else; the weights, vocabulary and index come
from the `package` artifact, checked against its SHA-256 manifest when `load_context` loads it.
"""

import mlflow

from playlistai.registry.pyfunc import PlaylistAIModel

mlflow.models.set_model(PlaylistAIModel())
