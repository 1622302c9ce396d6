"""Loading a model deserializes no Python objects.

The pyfunc model is logged "from code" (playlistai/registry/model_code.py), so MLflow stores no
CloudPickle of it; `load_recommender` (what the API and the promotion gate use) reads only the
`package` artifact, checked against its SHA-256 manifest, and runs no file of the model: not even a
pickle planted in an old-style model folder is opened."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from playlistai.inference.package import ModelPackageError
from playlistai.registry.pyfunc import MODEL_CODE_FILE, load_recommender, log_package_model

REGISTERED = "security-tiny"


@pytest.fixture(scope="module")
def logged_model(security_package, tmp_path_factory):
    """(models:/ URI of the registered version, a local copy of its files)."""
    from playlistai.tracking import configure_mlflow

    configure_mlflow()
    with mlflow.start_run(run_name="security-pickle"):
        info = log_package_model(security_package)
    version = mlflow.register_model(info.model_uri, REGISTERED).version
    uri = f"models:/{REGISTERED}/{version}"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path_factory.mktemp("logged"))))
    return uri, local


def pyfunc_flavor(model_dir: Path) -> dict:
    return yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]


def test_the_model_is_logged_from_code_without_a_pickle(logged_model):
    _, local = logged_model
    flavor = pyfunc_flavor(local)
    assert "python_model" not in flavor, flavor               # the key of a CloudPickle'd python_model
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    code = local / Path(flavor["model_code_path"]).name
    assert code.read_text() == MODEL_CODE_FILE.read_text()     # the stored code only names the installed class
    pickles = [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert pickles == []
    assert flavor["artifacts"]["package"]["path"] == "artifacts/package"


def test_loading_unpickles_nothing(logged_model, monkeypatch):
    uri, _ = logged_model

    def forbidden(*args, **kwargs):
        raise AssertionError("a model load unpickled something")

    import cloudpickle

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", forbidden)
        monkeypatch.setattr(module, "loads", forbidden)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    recommender = load_recommender(uri)
    assert recommender.model_version == uri.rsplit("/", 1)[-1]
    assert len(recommender.recommend(recommender.vocab.track_ids[:3], 5, 12, 3).items) == 5
    # MLflow's own loader accepts the model with pickle deserialization switched off
    model = mlflow.pyfunc.load_model(uri)
    assert model.unwrap_python_model().recommender.catalog_size == recommender.catalog_size


def _plant_pickle(model_dir: Path, marker: Path) -> None:
    """Turn a model folder into the old CloudPickle layout, with a pickle that creates `marker` when loaded."""

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    (model_dir / "python_model.pkl").write_bytes(pickle.dumps(Payload()))
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    flavor.pop("model_code_path", None)
    flavor["loader_module"] = "mlflow.pyfunc.model"
    flavor["python_model"] = "python_model.pkl"
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def test_a_planted_pickle_is_never_opened(logged_model, tmp_path):
    _, local = logged_model
    model_dir = tmp_path / "old-style"
    shutil.copytree(local, model_dir)
    marker = tmp_path / "the-pickle-ran"
    _plant_pickle(model_dir, marker)
    recommender = load_recommender(str(model_dir))
    assert recommender.catalog_size > 0
    assert not marker.exists()


def test_a_package_path_outside_the_model_is_refused(logged_model, tmp_path, security_package):
    _, local = logged_model
    model_dir = tmp_path / "escaping"
    shutil.copytree(local, model_dir)
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["artifacts"]["package"]["path"] = str(Path("..") / ".." / security_package)
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ModelPackageError, match="outside the model"):
        load_recommender(str(model_dir))


def test_a_tampered_package_file_is_refused(logged_model, tmp_path):
    _, local = logged_model
    model_dir = tmp_path / "tampered"
    shutil.copytree(local, model_dir)
    weights = model_dir / "artifacts" / "package" / "model.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                       # one flipped byte, same size
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelPackageError, match="model.pt.*(corrupt|checksum)"):
        load_recommender(str(model_dir))


def test_the_api_forbids_mlflow_to_unpickle(security_package, monkeypatch):
    """The real API (its own loader) sets MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false unless the
    deployment set it, and still serves a model: it never needed a pickle."""
    from fastapi.testclient import TestClient

    from serving.main import create_app
    from tests.serving.conftest import serving_settings

    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    with TestClient(create_app(serving_settings(MODEL_URI=str(security_package)))) as client:
        import os

        assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
        assert client.get("/readyz").status_code == 200
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false" in (Path(__file__).resolve().parents[2]
                                                             / "deploy" / "api.Dockerfile").read_text()
