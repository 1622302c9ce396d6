"""PlayListAI: playlist continuation with sequence models, tracked in MLflow."""

import logging

__version__ = "0.1.0"

# faiss's loader tries its AVX-512 and AVX2 builds first and logs each one it does not find as a
# ModuleNotFoundError at INFO, which reads like a failure wherever INFO is shown (the API's log, Ray
# workers); the build it does load works the same. Its warnings and errors still show.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
