"""ModelRef: the one reader of model references (paths, runs:/, models:/name/N, models:/name@alias)."""

from __future__ import annotations

import mlflow
import pytest

from playlistai.model_ref import ModelRef


@pytest.mark.parametrize(
    ("uri", "kind", "fields"),
    [
        ("outputs/checkpoint", "path", {}),
        ("/abs/dir/", "path", {}),
        ("runs:/0123abcd/checkpoint", "run", {"run_id": "0123abcd", "path": "checkpoint"}),
        ("runs:/0123abcd", "run", {"run_id": "0123abcd", "path": ""}),
        ("runs:/0123abcd/a/b/", "run", {"run_id": "0123abcd", "path": "a/b"}),
        ("models:/playlistai/3", "version", {"name": "playlistai", "version": "3", "path": ""}),
        ("models:/playlistai/3/", "version", {"name": "playlistai", "version": "3", "path": ""}),
        ("models:/playlistai/12/artifacts/package/x.npz", "version",
         {"name": "playlistai", "version": "12", "path": "artifacts/package/x.npz"}),
        ("models:/playlistai@production", "alias", {"name": "playlistai", "alias": "production"}),
        ("models:/play-list.ai@challenger/", "alias", {"name": "play-list.ai", "alias": "challenger"}),
        ("models:/m-0123abcd", "uri", {"name": None}),
        ("models:/playlistai/Production", "uri", {"version": None}),
        ("file:///tmp/model", "uri", {}),
        ("mlflow-artifacts:/1/abc/artifacts/model", "uri", {}),
        ("s3://bucket/model", "uri", {}),
    ],
)
def test_parse_reads_every_kind_of_reference(uri, kind, fields):
    ref = ModelRef.parse(uri)
    assert ref.kind == kind and ref.uri == uri and str(ref) == uri
    for name, value in fields.items():
        assert getattr(ref, name) == value, name
    assert ref.is_local == (kind == "path")
    assert ref.registered == (kind in ("version", "alias"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty model reference"),
        ("   ", "empty model reference"),
        ("runs:/", "names no run id"),
        ("runs://checkpoint", "names no run id"),
        ("runs:/not a run id/checkpoint", "is not an MLflow run id"),
        ("runs:abc", "runs:/<run_id>/<path>"),
        ("models:/", "names no registered model"),
        ("models://3", "names no registered model"),
        ("models:/@production", "names no registered model"),
        ("models:playlistai/3", "models:/<name>/<version>"),
        ("models:/playlistai@", "names no alias"),
        ("models:/playlistai@production/artifacts", "nothing after the alias"),
        ("models:/play@list@ai", "models:/<name>@<alias>"),
    ],
)
def test_parse_refuses_malformed_references_naming_the_problem(uri, message):
    with pytest.raises(ValueError, match=message) as info:
        ModelRef.parse(uri)
    if uri.strip():
        assert repr(uri) in str(info.value)          # the message quotes what was given


def test_builders_agree_with_parse():
    assert ModelRef.of_version("playlistai", 4) == ModelRef.parse("models:/playlistai/4")
    assert ModelRef.of_alias("playlistai", "production") == ModelRef.parse("models:/playlistai@production")
    assert ModelRef.of_run("abc123", "checkpoint") == ModelRef.parse("runs:/abc123/checkpoint")
    assert ModelRef.of_run("abc123").uri == "runs:/abc123"
    assert ModelRef.parse("models:/m/2/").child("/artifacts/package") == "models:/m/2/artifacts/package"


def test_pin_resolves_an_alias_and_leaves_other_references_alone():
    asked = []

    def resolve(name, alias):
        asked.append((name, alias))
        return "7"

    pinned = ModelRef.parse("models:/playlistai@production").pin(resolve)
    assert pinned == ModelRef.parse("models:/playlistai/7") and pinned.uri == "models:/playlistai/7"
    assert asked == [("playlistai", "production")]
    for uri in ("models:/playlistai/3", "runs:/abc/checkpoint", "some/dir", "file:///tmp/x"):
        ref = ModelRef.parse(uri)
        assert ref.pin(resolve) is ref
    assert len(asked) == 1                        # only the alias asked the registry


def test_local_dir_and_fetch_of_local_paths(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "f.txt").write_text("x")
    assert ModelRef.parse(str(model)).local_dir == model
    assert ModelRef.parse(f"file://{model}").local_dir == model
    assert ModelRef.parse(str(model / "f.txt")).local_dir is None       # a file, not a directory
    assert ModelRef.parse("runs:/abc/checkpoint").local_dir is None
    assert ModelRef.parse(str(model)).fetch(tmp_path / "unused") == model
    assert not (tmp_path / "unused").exists()                           # nothing was copied
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        ModelRef.parse(str(tmp_path / "missing")).fetch(tmp_path / "dst")


def test_pin_and_fetch_against_a_real_registry(tmp_path):
    """runs:/, models:/name/N and models:/name@alias of the session's SQLite store, end to end."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.txt").write_text("v1")
    client = mlflow.MlflowClient()
    name = "model-ref-test"
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(src), artifact_path="checkpoint")
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "production", mv.version)

    by_run = ModelRef.of_run(run.info.run_id, "checkpoint").fetch(tmp_path / "a")
    assert (by_run / "weights.txt").read_text() == "v1"

    alias = ModelRef.of_alias(name, "production")
    pinned = alias.pin()
    assert pinned.kind == "version" and pinned.version == str(mv.version)
    assert (pinned.fetch(tmp_path / "b") / "weights.txt").read_text() == "v1"

    with pytest.raises(mlflow.exceptions.MlflowException):
        ModelRef.of_alias(name, "no-such-alias").pin()
