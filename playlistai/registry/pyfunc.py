"""The MLflow pyfunc flavour of a model package.

`mlflow.pyfunc.load_model("models:/playlistai@production")` downloads the model, `load_context`
builds a Recommender from the package artifact, and `predict` answers a DataFrame of requests:

    input   tracks (list[str]), k, hour, dow; optional use_ann, exclude_seen, max_per_artist (0 = no cap)
    output  track_ids (list[str]), scores (list[float]), unknown_tracks (list[str]), fallback (bool)

Only the `playlistai` package (and its dependencies) must be installed where the model is loaded:
the model stores none of its code, so what serves is always the installed, tested code.

Nothing is pickled. The model is logged "from code" (playlistai/registry/model_code.py, a file of
three lines that names the installed `PlaylistAIModel`), not as a CloudPickle of the object, so
loading a model can never run code hidden in a pickle. `load_recommender`, what the API and the promotion gate use,
goes further: it reads the MLmodel file and builds the Recommender from the `package` artifact
itself, so it runs no file of the model at all (a version logged before models-from-code, with a
pickled `python_model`, loads the same way without being unpickled). The package's files are
checked against its SHA-256 manifest, and the checkpoint is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from playlistai.inference.package import PACKAGE_ARTIFACT, ModelPackageError
from playlistai.inference.recommender import Recommendation, Recommender
from playlistai.model_ref import ModelRef

MODEL_ARTIFACT_NAME = "model"
MODEL_CODE_FILE = Path(__file__).with_name("model_code.py")      # what MLflow stores instead of a pickle
OPTIONAL_DEFAULTS = {"use_ann": False, "exclude_seen": True, "max_per_artist": 0}
# runtime dependencies of a loaded model, pinned to what packaged it
RUNTIME_PACKAGES = ("torch", "faiss-cpu", "numpy", "pandas", "mlflow", "pydantic-settings")

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(Array(DataType.string), "tracks"),
            ColSpec(DataType.long, "k"),
            ColSpec(DataType.long, "hour"),
            ColSpec(DataType.long, "dow"),
            ColSpec(DataType.boolean, "use_ann", required=False),
            ColSpec(DataType.boolean, "exclude_seen", required=False),
            ColSpec(DataType.long, "max_per_artist", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec(Array(DataType.string), "track_ids"),
            ColSpec(Array(DataType.double), "scores"),
            ColSpec(Array(DataType.string), "unknown_tracks"),
            ColSpec(DataType.boolean, "fallback"),
        ]
    ),
)


class PlaylistAIModel(mlflow.pyfunc.PythonModel):
    recommender: Recommender

    def load_context(self, context) -> None:
        if PACKAGE_ARTIFACT not in context.artifacts:
            raise ModelPackageError(f"the MLflow model has no `{PACKAGE_ARTIFACT}` artifact (the model package)")
        self.recommender = Recommender.from_directory(context.artifacts[PACKAGE_ARTIFACT])

    # the input hint is one MLflow knows it cannot infer a schema from (pandas.DataFrame): the logged
    # signature validates inputs, and MLflow no longer warns "Add type hints to the `predict` method"
    # whenever this module is imported
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in ("tracks", "k", "hour", "dow") if c not in frame.columns]
        if missing:
            raise ValueError(f"model input is missing column(s) {', '.join(missing)}")
        frame = frame.reset_index(drop=True)
        for column, default in OPTIONAL_DEFAULTS.items():
            frame[column] = frame[column].fillna(default) if column in frame.columns else default
        results: list[Recommendation | None] = [None] * len(frame)
        # requests with the same switches are answered in one batch
        for (use_ann, exclude_seen, cap), group in frame.groupby(list(OPTIONAL_DEFAULTS), sort=False):
            answers = self.recommender.recommend_batch(
                [_as_track_list(t) for t in group["tracks"]],
                [int(k) for k in group["k"]],
                [int(h) for h in group["hour"]],
                [int(d) for d in group["dow"]],
                use_ann=bool(use_ann),
                exclude_seen=bool(exclude_seen),
                max_per_artist=int(cap) if int(cap) > 0 else None,
            )
            for row, answer in zip(group.index, answers, strict=True):
                results[row] = answer
        return pd.DataFrame(
            {
                "track_ids": [[t for t, _ in r.items] for r in results],
                "scores": [[s for _, s in r.items] for r in results],
                "unknown_tracks": [r.unknown_tracks for r in results],
                "fallback": [r.fallback for r in results],
            }
        )


def _as_track_list(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        raise ValueError("tracks must be a list of track ids, not a string")
    return [str(t) for t in value]


def input_example(recommender: Recommender) -> pd.DataFrame:
    """A known history (the model answers) and an unknown one (the popularity fallback answers)."""
    known = recommender.vocab.track_ids[:3]
    return pd.DataFrame(
        {
            "tracks": [list(known), ["track-not-in-catalog"]],
            "k": [5, 5],
            "hour": [21, 8],
            "dow": [5, 0],
            "use_ann": [False, False],
            "exclude_seen": [True, True],
            "max_per_artist": [0, 2],
        }
    )


def pip_requirements() -> list[str]:
    reqs = []
    for name in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def log_package_model(package_dir: str | Path, metadata: dict | None = None):
    """Log the package as a pyfunc model in the active run; returns MLflow's ModelInfo."""
    recommender = Recommender.from_directory(package_dir)
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_NAME,
        python_model=str(MODEL_CODE_FILE),
        artifacts={PACKAGE_ARTIFACT: str(package_dir)},
        signature=SIGNATURE,
        input_example=input_example(recommender),
        pip_requirements=pip_requirements(),
        metadata=metadata or {},
    )


def load_recommender(model_uri: str, num_threads: int | None = None, item_table_dtype: str = "float32") -> Recommender:
    """The Recommender behind a pyfunc model URI (`models:/playlistai@production`, `runs:/...`, a path).

    `model_version` is set when the URI names a registered version or alias. An alias is resolved
    to its version first, so the version reported is the one loaded even if the alias moves meanwhile.
    The model's files are downloaded and only its `package` artifact is read (module docstring):
    no file of the model is executed or unpickled.
    """
    try:
        ref = ModelRef.parse(model_uri)
    except ValueError as exc:
        raise ModelPackageError(f"cannot load model {model_uri!r}: {exc}") from None
    version = registered_version(ref)
    if version is not None and ref.kind == "alias":     # the version the alias names now, once
        ref = ModelRef.of_version(ref.name, version)
    model_uri = ref.uri
    try:
        local = ref.fetch()
    except mlflow.exceptions.MlflowException as exc:
        raise ModelPackageError(f"cannot load model {model_uri!r}: {exc.message}") from None
    except OSError as exc:
        raise ModelPackageError(f"cannot load model {model_uri!r}: {exc}") from None
    recommender = Recommender.from_directory(package_artifact_dir(local, model_uri), num_threads=num_threads,
                                             item_table_dtype=item_table_dtype)
    recommender.model_version = version
    return recommender


def package_artifact_dir(model_dir: Path, model_uri: str = "") -> Path:
    """The `package` artifact of a downloaded pyfunc model, as its MLmodel file names it (a folder
    inside the model's own folder); a bare package folder is returned as it is."""
    from mlflow.models import Model

    model_dir = Path(model_dir)
    where = model_uri or str(model_dir)
    if not (model_dir / "MLmodel").is_file():
        return model_dir                     # a package folder: Recommender.from_directory checks it
    try:
        flavor = Model.load(str(model_dir)).flavors.get("python_function") or {}
    except Exception as exc:  # a corrupt MLmodel file: YAML or schema errors of any kind
        raise ModelPackageError(f"{where!r}: its MLmodel file cannot be read: {exc}") from None
    relative = ((flavor.get("artifacts") or {}).get(PACKAGE_ARTIFACT) or {}).get("path")
    if not relative:
        raise ModelPackageError(f"{where!r} is not a PlayListAI model: its MLmodel names no "
                                f"`{PACKAGE_ARTIFACT}` artifact (the model package)")
    root = model_dir.resolve()
    package = (root / relative).resolve()
    if not package.is_relative_to(root):
        raise ModelPackageError(f"{where!r}: its `{PACKAGE_ARTIFACT}` artifact {relative!r} lies outside the model")
    return package


def registered_version(model_uri: str | ModelRef) -> str | None:
    """The version number a `models:/name@alias` or `models:/name/N` URI resolves to (None otherwise)."""
    ref = model_uri if isinstance(model_uri, ModelRef) else ModelRef.parse(model_uri)
    if ref.kind == "alias":
        try:
            return ref.pin().version
        except mlflow.exceptions.MlflowException as exc:
            raise ModelPackageError(f"cannot resolve {ref.uri!r}: {exc.message}") from None
    if ref.kind == "version" and not ref.path:
        return ref.version
    return None
