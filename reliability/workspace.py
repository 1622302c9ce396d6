"""One reliability run's world: its data, its MLflow store, its model versions, its processes.

The synthetic data of the profile's size is built once under `data_root` and kept (it does not
change between runs). Everything else lives under a fresh `root`: a SQLite MLflow store with its
artifacts, the packaged models, the logs of every process. `close()` stops whatever still runs.

Model versions are real packages (an untrained SASRec of the profile's width with its FAISS index:
serving cost does not depend on the weights' quality) registered as `playlistai` in that store.
Versions 1 and 2 differ in their weights, so their slates differ; the `production` alias starts on 1.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from reliability.components import ApiServer, MlflowServer, RedisServer
from reliability.core import Profile

log = logging.getLogger("reliability")

MODEL_NAME = "playlistai"
ALIAS = "production"


class Workspace:
    def __init__(self, profile: Profile, root: Path, data_root: Path) -> None:
        self.profile = profile
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_root / profile.size
        self.store = root / "store"
        self.store.mkdir(exist_ok=True)
        self.tracking_uri = f"sqlite:///{self.store}/mlflow.db"
        self.artifact_root = self.store / "mlartifacts"
        self._components: list = []
        self._packages: dict[int, Path] = {}
        self._good_versions: tuple[str, str] | None = None
        self._vocab = None
        self._use_store()

    # -- MLflow ----------------------------------------------------------------------------------
    def _use_store(self) -> None:
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        os.environ["MLFLOW_ARTIFACT_ROOT"] = str(self.artifact_root)
        from playlistai.config import get_settings

        get_settings.cache_clear()
        from playlistai.tracking import configure_mlflow

        configure_mlflow()

    @property
    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    # -- data and models -------------------------------------------------------------------------
    def ensure_data(self) -> Path:
        from playlistai.data.stages import ensure_synthetic_dataset

        started = time.perf_counter()
        if ensure_synthetic_dataset(self.data_dir, self.profile.size):
            log.info("built the %s data in %.0f s -> %s", self.profile.size, time.perf_counter() - started,
                     self.data_dir)
        return self.data_dir

    @property
    def vocab(self):
        if self._vocab is None:
            from playlistai.data.sequences import load_vocab

            self._vocab = load_vocab(self.ensure_data())
        return self._vocab

    def package(self, seed: int) -> Path:
        """A model package of the profile's shape whose weights come from `seed`."""
        if seed in self._packages:
            return self._packages[seed]
        import torch

        from playlistai.config import get_settings
        from playlistai.models import ModelConfig, build_model
        from playlistai.models.checkpoint import save_checkpoint
        from playlistai.registry.packaging import build_package

        torch.manual_seed(seed)
        config = ModelConfig(family="sasrec", vocab_size=self.vocab.size, d_model=self.profile.model_d,
                             n_layers=2, max_seq_len=get_settings().MAX_SEQ_LEN)
        out = self.root / "packages" / f"seed-{seed}"
        checkpoint = save_checkpoint(out / "checkpoint", build_model(config), self.vocab)
        build_package(checkpoint, self.data_dir, out / "package")
        self._packages[seed] = out / "package"
        return out / "package"

    def register(self, package: Path, run_name: str) -> str:
        """Log `package` as a pyfunc model in a run of its own and register it; return the version."""
        import mlflow

        from playlistai.registry.pyfunc import log_package_model

        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_name=run_name):
            info = log_package_model(package)
        return str(mlflow.register_model(info.model_uri, MODEL_NAME).version)

    def good_versions(self) -> tuple[str, str]:
        """Two loadable versions with different weights; built and registered once per run."""
        if self._good_versions is None:
            started = time.perf_counter()
            first = self.register(self.package(0), "reliability-good-1")
            second = self.register(self.package(1), "reliability-good-2")
            self._good_versions = (first, second)
            log.info("registered versions %s and %s in %.0f s", first, second, time.perf_counter() - started)
        return self._good_versions

    def set_production(self, version: str) -> None:
        self.client.set_registered_model_alias(MODEL_NAME, ALIAS, version)

    def version_source(self, version: str) -> Path:
        """The local folder holding a version's artifacts (the store keeps them on this disk)."""
        from urllib.parse import urlparse

        source = self.client.get_model_version(MODEL_NAME, version).source
        if source.startswith("models:/"):     # MLflow 3 registers a logged model: its artifacts are elsewhere
            source = self.client.get_logged_model(source[len("models:/"):]).artifact_location
        path = Path(urlparse(source).path) if source.startswith("file:") else Path(source)
        if not path.is_dir():
            raise RuntimeError(f"version {version}'s artifacts are not a local folder: {source}")
        return path

    # -- processes -------------------------------------------------------------------------------
    def redis(self) -> RedisServer:
        return self.track(RedisServer().start())

    def mlflow_server(self, backend_uri: str | None = None, start: bool = True) -> MlflowServer:
        server = MlflowServer(backend_uri or self.tracking_uri, self.root / "served-artifacts",
                              self.root / "mlflow-server.log")
        self.track(server)
        return server.start() if start else server

    def api(self, name: str, env: dict[str, str] | None = None, workers: int | None = None,
            wait_ready_s: float | None = 180) -> ApiServer:
        """The API serving `playlistai@production` from this workspace's store (override with `env`)."""
        base = {"MLFLOW_TRACKING_URI": self.tracking_uri, "REGISTERED_MODEL_NAME": MODEL_NAME,
                "MODEL_ALIAS": ALIAS, "MODEL_POLL_S": str(self.profile.poll_s), "REDIS_URL": "",
                "USE_FAISS": "false", "ADMIN_TOKEN": "reliability-admin-token"}
        server = ApiServer({**base, **(env or {})}, self.root, workers or self.profile.workers, name)
        self.track(server)
        return server.start(wait_ready_s)

    def track(self, component):
        """Stop `component` (anything with `stop()`) when the workspace closes."""
        self._components.append(component)
        return component

    def close(self) -> None:
        for component in reversed(self._components):
            try:
                component.stop()
            except Exception as exc:
                log.warning("stopping %s: %s", type(component).__name__, exc)
        self._components.clear()
