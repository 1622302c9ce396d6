"""Fixtures of the serving tests: a fast fake Recommender with the real one's API, and apps built on it.

The fake keeps the contract of `playlistai.inference.Recommender.recommend`: items best first with
no duplicates, unknown ids dropped and reported, popularity fallback when nothing is known, input
tracks excluded when asked, at most `max_per_artist` per artist.
"""

from __future__ import annotations

import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from playlistai.config import Settings
from reliability.components import RedisServer

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeRecommendation:
    items: list[tuple[str, float]]
    unknown_tracks: list[str]
    fallback: bool


@dataclass
class FakeVocab:
    track_ids: list[str]
    artist_ids: list[str]
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self._index = {t: i for i, t in enumerate(self.track_ids)}

    def __contains__(self, track_id):
        return track_id in self._index

    def __len__(self):
        return len(self.track_ids)


class FakeRecommender:
    def __init__(self, n_tracks: int = 300, model_version: str | None = None, tag: str = "a"):
        self.vocab = FakeVocab([f"t{i}" for i in range(n_tracks)], [f"a{i % 40}" for i in range(n_tracks)])
        self.config = {"max_seq_len": 50}
        self.model_version = model_version
        self.tag = tag
        self.calls = 0

    def recommend(self, tracks, k, hour, dow, *, use_ann=False, exclude_seen=True, max_per_artist=None,
                  ann_candidates=0):
        self.calls += 1
        history = list(tracks)[-self.config["max_seq_len"]:]
        known = [t for t in history if t in self.vocab]
        unknown = [t for t in history if t not in self.vocab]
        seen = set(tracks) if exclude_seen else set()
        n = len(self.vocab)
        if known:
            seed = zlib.crc32(f"{self.tag}|{known[-1]}|{hour}|{dow}|{use_ann}".encode())
            order = [(seed + 7 * i) % n for i in range(n)]
        else:
            order = list(range(n))        # popularity order
        items, per_artist = [], {}
        for rank, index in enumerate(order):
            track = self.vocab.track_ids[index]
            if track in seen:
                continue
            artist = self.vocab.artist_ids[index]
            if max_per_artist is not None and per_artist.get(artist, 0) >= max_per_artist:
                continue
            per_artist[artist] = per_artist.get(artist, 0) + 1
            items.append((track, 1.0 / (1 + rank)))
            if len(items) == k:
                break
        return FakeRecommendation(items, unknown, not known)


# in-process tests judge answers to inputs, not to load: in a long test run's big heap one garbage
# collection can hold a request past the 250 ms queue timeout, which would shed it with 503. The
# admission tests (test_serving_admission.py) set the limits they check.
NO_SHEDDING = dict(QUEUE_TIMEOUT_MS=60_000, QUEUE_TARGET_MS=60_000, REQUEST_TIMEOUT_MS=600_000)


def serving_settings(**overrides) -> Settings:
    values = dict(REDIS_URL="", MODEL_POLL_S=3600, ADMIN_TOKEN=None, MODEL_URI=None, TIMEZONE="UTC", **NO_SHEDDING)
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def make_settings():
    """make_settings(**overrides) -> Settings for a test app (no .env, no Redis, slow poll)."""
    return serving_settings


@pytest.fixture(scope="session")
def fake_recommender_class():
    return FakeRecommender


class FakeRegistry:
    """Alias -> version, and version -> recommender; `fail_versions` cannot be loaded."""

    def __init__(self):
        self.alias_version = "1"
        self.models = {"1": FakeRecommender(model_version="1", tag="v1"),
                       "2": FakeRecommender(model_version="2", tag="v2")}
        self.fail_versions: set[str] = set()
        self.resolve_error: Exception | None = None
        self.loads: list[str] = []

    def resolve(self, name, alias):
        if self.resolve_error is not None:
            raise self.resolve_error
        return self.alias_version

    def load(self, uri):
        self.loads.append(uri)
        version = uri.rsplit("/", 1)[-1]
        if version in self.fail_versions:
            raise FileNotFoundError(f"artifact model.pt of version {version} is missing")
        return self.models[version]


@pytest.fixture
def fake_registry():
    return FakeRegistry()


@pytest.fixture(scope="session")
def fake_registry_class():
    return FakeRegistry


@pytest.fixture
def make_client(fake_registry):
    """make_client(**settings) -> a started TestClient over the fake registry (closed at teardown)."""
    from serving.main import create_app

    clients = []

    def make(registry=None, **overrides):
        registry = registry or fake_registry
        app = create_app(serving_settings(**overrides), loader=registry.load, alias_resolver=registry.resolve)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


# -- a real tiny model in a real MLflow registry ---------------------------------------------------

REGISTERED_NAME = "serving-tiny"


def _tiny_package(data_dir, out_root, seed: int):
    import torch

    from playlistai.data.sequences import load_vocab
    from playlistai.models import ModelConfig, build_model
    from playlistai.models.checkpoint import save_checkpoint
    from playlistai.registry.packaging import build_package

    torch.manual_seed(seed)
    vocab = load_vocab(data_dir)
    model = build_model(ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=32, n_layers=1, max_seq_len=20))
    checkpoint = save_checkpoint(out_root / f"checkpoint-{seed}", model, vocab)
    package = out_root / f"package-{seed}"
    build_package(checkpoint, data_dir, package)
    return package


@pytest.fixture(scope="session")
def tiny_registry(tiny_data_dir, tmp_path_factory):
    """Two versions of the registered model `serving-tiny` (untrained weights, seeds 0 and 1) in the
    session's MLflow store; the `production` alias points at version 1."""
    import mlflow

    from playlistai.registry.pyfunc import log_package_model
    from playlistai.tracking import configure_mlflow

    configure_mlflow()
    root = tmp_path_factory.mktemp("serving_models")
    packages = {}
    for version, seed in (("1", 0), ("2", 1)):
        package = _tiny_package(tiny_data_dir, root, seed)
        with mlflow.start_run(run_name=f"serving-tiny-{version}"):
            info = log_package_model(package)
        registered = mlflow.register_model(info.model_uri, REGISTERED_NAME)
        assert str(registered.version) == version
        packages[version] = package
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(REGISTERED_NAME, "production", "1")
    return {"name": REGISTERED_NAME, "client": client, "packages": packages,
            "tracking_uri": mlflow.get_tracking_uri()}


@pytest.fixture(scope="session")
def registry_settings(tiny_registry):
    """registry_settings(**overrides) -> Settings serving `serving-tiny@production`."""

    def make(**overrides):
        return serving_settings(REGISTERED_MODEL_NAME=tiny_registry["name"],
                                MLFLOW_TRACKING_URI=tiny_registry["tracking_uri"], **overrides)

    return make


@pytest.fixture
def make_registry_client(registry_settings):
    """make_registry_client(**settings) -> a started TestClient serving `serving-tiny@production`."""
    from serving.main import create_app

    clients = []

    def make(**overrides):
        client = TestClient(create_app(registry_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- a throw-away Redis on its own port -------------------------------------------------------------

@pytest.fixture
def redis_process():
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer().start()
    yield server
    server.stop()
