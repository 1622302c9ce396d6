"""A reference to a model: what every stage, the API and the drift job accept as `model_uri`.

    /path/to/dir, dir           a local directory (a checkpoint, a model package, a pyfunc model)
    runs:/<run_id>[/<path>]     an artifact of an MLflow run (`runs:/<id>/checkpoint`)
    models:/<name>/<N>[/<path>] version N of a registered model
    models:/<name>@<alias>      the version an alias of a registered model names now
    models:/<id>, file://..., s3://..., ...
                                any other MLflow artifact URI, handed to MLflow as it is

`ModelRef.parse` reads one and refuses a malformed one with a ValueError that says what is wrong.
`pin` resolves an alias to the version it names now, so that whatever is loaded next is that
version even if the alias moves meanwhile; `fetch` downloads the reference into a local directory
(a local path is returned as it is). MLflow is imported only by `pin` and `fetch`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["path", "run", "version", "alias", "uri"]
AliasResolver = Callable[[str, str], str]          # (registered name, alias) -> version

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
_NAME = r"[^/@]+"
_ALIAS = re.compile(rf"^models:/(?P<name>{_NAME})@(?P<alias>[^/@]*)/?$")
_VERSION = re.compile(rf"^models:/(?P<name>{_NAME})/(?P<version>\d+)(?:/(?P<path>.*?))?/?$")
_RUN = re.compile(r"^runs:/(?P<run_id>[^/]*)(?:/(?P<path>.*?))?/?$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ModelRef:
    uri: str                              # the reference as given
    kind: Kind
    name: str | None = None               # registered model name (version, alias)
    version: str | None = None            # registered version (version)
    alias: str | None = None              # registry alias (alias)
    run_id: str | None = None             # MLflow run id (run)
    path: str = ""                        # artifact path inside the run or the version

    @classmethod
    def parse(cls, value: str) -> ModelRef:
        """Read a model reference; a malformed one raises ValueError naming what is wrong."""
        uri = str(value).strip() if value is not None else ""
        if not uri:
            raise ValueError("empty model reference: give a directory, runs:/<run_id>/<path>, "
                             "models:/<name>/<version> or models:/<name>@<alias>")
        if uri.startswith("runs:"):
            return cls._parse_run(uri)
        if uri.startswith("models:"):
            return cls._parse_registered(uri)
        if _SCHEME.match(uri):
            return cls(uri, "uri")
        return cls(uri, "path")

    @classmethod
    def _parse_run(cls, uri: str) -> ModelRef:
        match = _RUN.match(uri)
        if match is None:
            raise ValueError(f"model reference {uri!r}: a run reference reads runs:/<run_id>/<path>")
        run_id = match["run_id"]
        if not run_id:
            raise ValueError(f"model reference {uri!r} names no run id (runs:/<run_id>/<path>)")
        if not _RUN_ID.match(run_id):
            raise ValueError(f"model reference {uri!r}: {run_id!r} is not an MLflow run id")
        return cls(uri, "run", run_id=run_id, path=match["path"] or "")

    @classmethod
    def _parse_registered(cls, uri: str) -> ModelRef:
        if not uri.startswith("models:/"):
            raise ValueError(f"model reference {uri!r}: a registry reference reads models:/<name>/<version> "
                             "or models:/<name>@<alias>")
        rest = uri[len("models:/"):]
        if not rest.strip("/") or rest.startswith(("/", "@")):
            raise ValueError(f"model reference {uri!r} names no registered model "
                             "(models:/<name>/<version> or models:/<name>@<alias>)")
        if "@" in rest:
            match = _ALIAS.match(uri)
            if match is None:
                raise ValueError(f"model reference {uri!r}: an alias reference reads models:/<name>@<alias>, "
                                 "with nothing after the alias")
            if not match["alias"]:
                raise ValueError(f"model reference {uri!r} names no alias after '@' (models:/<name>@<alias>)")
            return cls(uri, "alias", name=match["name"], alias=match["alias"])
        if match := _VERSION.match(uri):
            return cls(uri, "version", name=match["name"], version=match["version"], path=match["path"] or "")
        return cls(uri, "uri")          # models:/<model id>, a stage name: MLflow reads them

    # -- what it names --------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.kind == "path"

    @property
    def registered(self) -> bool:
        """A version or an alias of a registered model."""
        return self.kind in ("version", "alias")

    @property
    def local_dir(self) -> Path | None:
        """The directory a local path or a `file://` URI names, when it is one; None otherwise."""
        if self.kind == "path":
            path = Path(self.uri)
        elif self.kind == "uri" and self.uri.startswith("file://"):
            path = Path(self.uri[len("file://"):])
        else:
            return None
        return path if path.is_dir() else None

    def child(self, path: str) -> str:
        """The URI of `path` inside what this reference names (`models:/m/3/artifacts/x`)."""
        return f"{self.uri.rstrip('/')}/{path.lstrip('/')}"

    @classmethod
    def of_version(cls, name: str, version: str | int) -> ModelRef:
        return cls(f"models:/{name}/{version}", "version", name=name, version=str(version))

    @classmethod
    def of_alias(cls, name: str, alias: str) -> ModelRef:
        return cls.parse(f"models:/{name}@{alias}")

    @classmethod
    def of_run(cls, run_id: str, path: str = "") -> ModelRef:
        return cls.parse(f"runs:/{run_id}/{path}" if path else f"runs:/{run_id}")

    # -- resolving and downloading --------------------------------------------------------------

    def pin(self, resolve: AliasResolver | None = None) -> ModelRef:
        """An alias reference becomes the version it names now (`models:/name/N`); any other
        reference is returned as it is. `resolve(name, alias) -> version` defaults to the MLflow
        registry of the current tracking URI; its errors (MlflowException, network errors) propagate."""
        if self.kind != "alias":
            return self
        if resolve is None:
            import mlflow

            version = mlflow.MlflowClient().get_model_version_by_alias(self.name, self.alias).version
        else:
            version = resolve(self.name, self.alias)
        return self.of_version(self.name, str(version))

    def fetch(self, dst: str | Path | None = None) -> Path:
        """A local directory holding what the reference names: a local path as it is (it must exist:
        FileNotFoundError otherwise), anything else downloaded by MLflow under `dst` (a temporary
        directory of MLflow's when None; MLflow's errors propagate)."""
        if self.kind == "path":
            path = Path(self.uri)
            if not path.exists():
                raise FileNotFoundError(f"{self.uri!r}: no such file or directory")
            return path
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=self.uri, dst_path=None if dst is None else str(dst)))

    def __str__(self) -> str:
        return self.uri
