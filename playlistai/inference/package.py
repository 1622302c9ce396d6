"""The model package: one directory that holds everything a Recommender needs, and nothing else.

    model.pt, config.json, vocab.json   the training checkpoint (playlistai.models.checkpoint)
    neighbours.npz                      its session neighbours, when the model mixes them in (optional)
    ann.faiss                           FAISS inner-product index over the item embeddings
    ann.json                            its type, build and search parameters, measured overlap
    popularity.npz                      per-hour play counts for the cold-start fallback
    drift_reference.json                training-data feature statistics (histograms, quantiles)
    drift_reference.npz                 a sample of training feature rows (reference for drift tests)
    manifest.json                       every file above with its size and SHA-256

The registry ships this directory as the artifact `package` of the MLflow pyfunc model, so a
package can be loaded from a local copy, a downloaded `models:/` URI, or through pyfunc alike.
Every file is checked against the manifest on load, so a truncated upload or a hand-edited file
fails with a message naming the file, instead of serving wrong answers.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
ANN_INDEX_FILE = "ann.faiss"
ANN_PARAMS_FILE = "ann.json"
POPULARITY_FILE = "popularity.npz"
DRIFT_STATS_FILE = "drift_reference.json"
DRIFT_SAMPLE_FILE = "drift_reference.npz"

# what each file is, for error messages a person can act on
PACKAGE_FILES = {
    "model.pt": "the model weights (state_dict)",
    "config.json": "the model configuration",
    "vocab.json": "the track vocabulary with artists",
    ANN_INDEX_FILE: "the FAISS index",
    ANN_PARAMS_FILE: "the FAISS index parameters",
    POPULARITY_FILE: "the popularity table for cold start",
    DRIFT_STATS_FILE: "the training feature statistics for drift",
    DRIFT_SAMPLE_FILE: "the training feature sample for drift",
}

# files a package holds only for some models: when present they are sealed and checked like the rest
OPTIONAL_FILES = {
    "neighbours.npz": "the session neighbours mixed into the scores",
}

# the pyfunc model keeps the package under artifacts/<this name>
PACKAGE_ARTIFACT = "package"


class ModelPackageError(ValueError):
    """A model package is missing a file or holds one that is corrupt; the message names it."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, extra: dict | None = None) -> dict:
    directory = Path(directory)
    missing = [name for name in PACKAGE_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelPackageError(f"cannot seal package {directory}: missing {', '.join(missing)}")
    sealed = {**PACKAGE_FILES, **{n: w for n, w in OPTIONAL_FILES.items() if (directory / n).is_file()}}
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {
            name: {"sha256": sha256_of(directory / name), "bytes": (directory / name).stat().st_size, "what": what}
            for name, what in sealed.items()
        },
        **(extra or {}),
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def resolve_package_dir(path: str | Path) -> Path:
    """The package directory itself, or the pyfunc model directory that holds it."""
    path = Path(path)
    if not path.is_dir():
        raise ModelPackageError(f"model package {path} does not exist or is not a directory")
    for candidate in (path, path / "artifacts" / PACKAGE_ARTIFACT, path / PACKAGE_ARTIFACT):
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    raise ModelPackageError(
        f"model package {path} is missing {MANIFEST_FILE} (the list of package files): "
        "it is not a PlayListAI package, or its upload was cut short"
    )


def verify_package(directory: Path) -> dict:
    """Check every file against the manifest; return the manifest. Raises ModelPackageError."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelPackageError(f"{directory / MANIFEST_FILE} is corrupt: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelPackageError(
            f"{directory} has package format {manifest.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
    described_as = {**PACKAGE_FILES, **OPTIONAL_FILES}
    expected = set(PACKAGE_FILES) | {n for n in OPTIONAL_FILES if n in files}
    missing = sorted(name for name in expected if not (directory / name).is_file())
    if missing:
        described = ", ".join(f"{name} ({described_as[name]})" for name in missing)
        raise ModelPackageError(f"model package {directory} is missing {described}")
    # an optional file present but never sealed would change the answers unchecked
    unlisted = sorted((expected | {n for n in OPTIONAL_FILES if (directory / n).is_file()}) - set(files))
    if unlisted:
        raise ModelPackageError(f"{directory / MANIFEST_FILE} does not list {', '.join(unlisted)}")
    for name in sorted(expected):
        entry = files[name]
        path = directory / name
        size = path.stat().st_size
        if size != entry.get("bytes") or sha256_of(path) != entry.get("sha256"):
            raise ModelPackageError(
                f"model package file {path} ({described_as[name]}) is corrupt: its size or checksum "
                f"differs from {MANIFEST_FILE} ({size} bytes, expected {entry.get('bytes')})"
            )
    return manifest
