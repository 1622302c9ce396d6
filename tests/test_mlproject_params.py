"""MLproject declares each stage's params as the stage's params dataclass does: the same names, the
same defaults ("" where Settings supply the default, so that the environment takes effect under
`mlflow run` too), each passed on as its CLI option; and the CLI reads what it receives as the
dataclass's types."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml

from entrypoints.params import as_received, as_string, parse
from monitoring.drift_job import DriftParams
from playlistai.config import Settings, load_settings
from playlistai.data.stages import DataParams, PreprocessParams, SplitsParams
from playlistai.evaluation.stage import EvaluateParams
from playlistai.params import in_mlproject, setting_of
from playlistai.pipeline import MainParams
from playlistai.registry.stage import RegisterParams
from playlistai.training.stage import TrainParams

REPO = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]

PARAMS = {
    "data": DataParams,
    "preprocess": PreprocessParams,
    "splits": SplitsParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "register": RegisterParams,
    "main": MainParams,
    "drift": DriftParams,
}
# Settings-backed params whose MLproject default is the setting's default rather than "": under
# `mlflow run` the setting does not apply to them (the README says so)
PINNED = {
    ("preprocess", "session_gap_min"),   # the run's param is the gap used (tests/integration)
}


def test_every_entry_point_has_a_params_dataclass():
    assert set(PROJECT) == set(PARAMS)


def declared(entry: str) -> dict:
    return PROJECT[entry]["parameters"]


@pytest.mark.parametrize("entry", sorted(PARAMS))
def test_mlproject_declares_every_field_and_nothing_else(entry):
    ours = {f.name for f in fields(PARAMS[entry]) if in_mlproject(f)}
    assert set(declared(entry)) == ours, f"{entry}: MLproject only {set(declared(entry)) - ours}, " \
                                         f"the dataclass only {ours - set(declared(entry))}"


@pytest.mark.parametrize("entry", sorted(PARAMS))
def test_mlproject_defaults_are_the_dataclass_defaults(entry):
    cls = PARAMS[entry]
    settings_defaults = Settings.model_construct()    # the class's own defaults, not this environment's
    assert {name for e, name in PINNED if e == entry} <= {f.name for f in fields(cls) if setting_of(f)}
    for f in fields(cls):
        if not in_mlproject(f):
            continue
        default = declared(entry)[f.name]["default"]
        setting = setting_of(f)
        if setting:
            assert as_string(getattr(settings_defaults, setting)) == as_string(f.default), \
                f"{entry}.{f.name}: the dataclass default is not {setting}'s"
        if setting and (entry, f.name) not in PINNED:
            assert default == "", f"{entry}.{f.name}: \"\" lets {setting} take effect under `mlflow run`"
        else:
            assert as_string(default) == as_string(f.default), f"{entry}.{f.name}: MLproject {default!r}"


@pytest.mark.parametrize("entry", sorted(PARAMS))
def test_mlproject_passes_each_param_as_its_option_with_a_type_of_its_field(entry):
    cls = PARAMS[entry]
    types = get_type_hints(cls)
    command = PROJECT[entry]["command"]
    for f in fields(cls):
        if not in_mlproject(f):
            continue
        option = "--" + f.name.replace("_", "-")
        assert f"{option} {{{f.name}}}" in command, f"{entry}: {option} {{{f.name}}} is not in the command"
        expected = "float" if types[f.name] in (int, float) else "string"
        assert declared(entry)[f.name]["type"] == expected, f"{entry}.{f.name}"


def test_an_empty_or_omitted_settings_backed_option_takes_the_setting():
    settings = load_settings(MODEL_D=32, MAX_SEQ_LEN=30, MODEL_NAME="gru4rec")
    params = parse(TrainParams, {"d_model": "", "model": "", "epochs": "3.0", "use_context": "false"}, settings)
    assert (params.d_model, params.max_seq_len, params.model) == (32, 30, "gru4rec")
    assert (params.epochs, params.use_context, params.n_layers) == (3, False, 2)
    assert parse(TrainParams, {"d_model": "64"}, settings).d_model == 64


def test_params_are_logged_as_received_and_settings_defaults_as_taken():
    received = {"d_model": "", "epochs": "3.0", "progress": "false", "model": None, "resume_from": ""}
    assert as_received(TrainParams, received) == {"epochs": "3.0", "resume_from": ""}


@pytest.mark.parametrize("received, message", [
    ({"epochs": "two"}, "epochs: expected an integer, got 'two'"),
    ({"d_model": "wide"}, "d_model: expected an integer, got 'wide'"),
    ({"lr": "fast"}, "lr: expected a number, got 'fast'"),
    ({"use_context": "maybe"}, "use_context: expected true or false, got 'maybe'"),
])
def test_a_bad_value_names_its_param(received, message):
    with pytest.raises(ValueError, match=message):
        parse(TrainParams, received, load_settings())
