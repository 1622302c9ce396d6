"""The `evaluate` entry point on the tiny synthetic data: every key of docs/ARCHITECTURE.md
("Metrics") for every scorer, the headline keys flat and every other key in a group."""

import json

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from entrypoints.evaluate import app
from playlistai.data.sequences import load_vocab
from playlistai.evaluation import keys as K
from playlistai.evaluation.bootstrap import paired_bootstrap
from playlistai.evaluation.stage import (
    PRIMARY,
    EvaluateParams,
    LeakageError,
    ScorerRow,
    beats_every_baseline,
    check_split,
    compute_evaluation,
    row_metric_keys,
)
from playlistai.models import ModelConfig, build_model
from playlistai.models.checkpoint import save_checkpoint
from playlistai.tracking import configure_mlflow, stage_run

DESIGN_KEYS = [
    "recall_at_20", "ndcg_at_10", "mrr_at_20", "cont_recall_at_20", "coverage_at_100",
    "repetition_rate_at_20", "artist_diversity_at_20", "popularity_bias_at_20",
]
SCORERS = {"sasrec", "gru4rec_noctx", "mostpop", "mostpop_hour", "transitions", "sknn", "oracle"}
HEADLINE = {"test_recall_at_20", "test_ndcg_at_10", "test_mrr_at_20", "test_coverage_at_100",
            "test_repetition_rate_at_20"}
GROUPS = {"ci", "context", "oracle", "compare", "with_repeats", "more", "info"}


def assert_grouped(logged, headline=HEADLINE) -> None:
    """Only the headline keys are flat (MLflow's "Model metrics" section); each other key is in a group."""
    assert headline <= set(logged)
    flat = {k for k in logged if "/" not in k}
    assert flat == headline, sorted(flat - headline)
    assert {k.split("/", 1)[0] for k in logged if "/" in k} <= GROUPS


def load_per_case(run_id: str) -> dict[str, np.ndarray]:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/per_case.npz")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def logged_checkpoint(tiny_data_dir, tmp_path_factory) -> str:
    """Two untrained small models on the tiny vocabulary: a SASRec logged as a training run would
    (runs:/<id>/checkpoint) and a context-free GRU4Rec in a local directory."""
    torch.manual_seed(0)
    vocab = load_vocab(tiny_data_dir)
    root = tmp_path_factory.mktemp("ckpt")
    sasrec = build_model(ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=16, n_heads=1, n_layers=1,
                                     max_seq_len=20))
    directory = save_checkpoint(root / "sasrec", sasrec, vocab)
    with stage_run("train", {"note": "evaluation test"}) as run:
        mlflow.log_artifacts(str(directory), artifact_path="checkpoint")
    gru = build_model(ModelConfig(family="gru4rec", vocab_size=vocab.size, d_model=16, n_layers=1, max_seq_len=20,
                                  use_context=False))
    local = save_checkpoint(root / "gru4rec", gru, vocab)
    return f"runs:/{run.info.run_id}/checkpoint,{local}"


@pytest.fixture(scope="module")
def evaluate_run(tiny_data_dir, logged_checkpoint):
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(tiny_data_dir), "--model-uri", logged_checkpoint, "--n-resamples", "50",
         "--ks", "5,10,20"],
    )
    assert result.exit_code == 0, result.output
    configure_mlflow()
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.stage = 'evaluate'", order_by=["start_time DESC"],
        output_format="list",
    )
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children, result.output


def test_every_design_key_is_logged_for_the_model_each_baseline_and_the_oracle(evaluate_run):
    parent, children, _ = evaluate_run
    by_name = {c.data.tags["scorer"]: c for c in children}
    assert set(by_name) == SCORERS
    for name, run in by_name.items():
        logged = run.data.metrics
        assert_grouped(logged)
        for key in DESIGN_KEYS:
            main = f"test_{key}" if f"test_{key}" in HEADLINE else f"more/test_{key}"
            assert main in logged, (name, key)
            assert f"with_repeats/test_{key}" in logged, (name, key)
            assert 0.0 <= logged[main] <= 1.0, (name, key)
        for key in ("recall_at_20", "ndcg_at_10"):
            assert logged[f"ci/test_{key}_low"] <= logged[f"test_{key}"] <= logged[f"ci/test_{key}_high"]
            assert f"oracle/test_{key}" in logged
            if name != "oracle":
                assert f"oracle/test_{key}_ratio" in logged
        assert {"more/test_recall_at_5", "info/test_repeat_target_share", "info/test_num_cases",
                "info/test_eval_seconds"} <= set(logged)
    # the context ablation of the model, the model's keys and the oracle's on the parent run
    for name in ("sasrec", "gru4rec_noctx"):
        assert {"context/test_ndcg_at_10_lift", "context/test_ndcg_at_10_lift_p_value",
                "context/test_ndcg_at_10_shuffled"} <= set(by_name[name].data.metrics)
    assert not any(k.startswith("context/") for k in by_name["mostpop"].data.metrics)
    assert "oracle/test_recall_at_20" in parent.data.metrics
    assert {"compare/test_ndcg_at_10_diff_sasrec_vs_gru4rec_noctx",
            "compare/test_ndcg_at_10_diff_sasrec_vs_gru4rec_noctx_p_value"} <= set(parent.data.metrics)
    assert not {k for k in parent.data.metrics if "/" not in k}, "two models: the parent has no headline keys"
    assert {k.split("/", 1)[0] for k in parent.data.metrics} <= GROUPS
    assert parent.data.params["split"] == "test" and parent.data.params["exclude_seen"] == "True"


def test_report_artifacts_are_logged(evaluate_run):
    parent, children, output = evaluate_run
    client = mlflow.tracking.MlflowClient()
    paths = {f.path for f in client.list_artifacts(parent.info.run_id, "evaluation")}
    assert {"evaluation/report.json", "evaluation/report.md", "evaluation/plots"} <= paths
    plots = {f.path for f in client.list_artifacts(parent.info.run_id, "evaluation/plots")}
    assert len(plots) == 3
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="evaluation/report.json")
    report = json.loads(open(local).read())
    assert {r["name"] for r in report["rows"]} == SCORERS
    baselines = {"mostpop", "mostpop_hour", "transitions", "sknn"}
    assert {c["b"] for c in report["comparisons"] if c["a"] == "sasrec"} == baselines | {"gru4rec_noctx"}
    assert {c["b"] for c in report["comparisons"] if c["a"] == "gru4rec_noctx"} == baselines | {"sasrec"}
    table = open(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="evaluation/report.md")).read()
    assert "| oracle | oracle |" in table and "[" in table
    by_name = {c.data.tags["scorer"]: c.info.run_id for c in children}
    model, mostpop = load_per_case(by_name["sasrec"]), load_per_case(by_name["mostpop"])
    assert len(model["ndcg_at_10"]) == report["num_cases"] == len(model["session_id"])
    assert np.array_equal(model["session_id"], mostpop["session_id"])       # one run: the same cases, in order
    cmp = paired_bootstrap(model["recall_at_20"], mostpop["recall_at_20"], model["session_id"], n_resamples=50)
    logged = next(c for c in report["comparisons"] if c["b"] == "mostpop" and c["metric"] == "recall_at_20")
    assert cmp.mean_diff == pytest.approx(logged["mean_diff"])
    assert "sasrec" in output and "oracle" in output


def test_training_split_is_refused_unless_allowed(tiny_data_dir):
    result = CliRunner().invoke(app, ["--data-dir", str(tiny_data_dir), "--split", "train"])
    assert result.exit_code == 2
    assert "refusing to evaluate on the training split" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)            # a clean exit, not an unhandled error
    with pytest.raises(LeakageError):
        check_split("train", allow_train_split=False)
    check_split("train", allow_train_split=True)
    report = compute_evaluation(EvaluateParams(data_dir=str(tiny_data_dir), split="train", allow_train_split=True,
                                               baselines="mostpop", n_resamples=10), oracle=False).as_dict()
    assert report["split"] == "train"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "holdout"], "split must be one of"),
        (["--ks", "ten"], "ks: expected"),
        (["--baselines", "mostpop,magic"], "unknown"),
        (["--exclude-seen", "maybe"], "exclude_seen"),
        (["--model-uri", "/no/such/checkpoint"], "no such checkpoint"),
    ],
)
def test_bad_params_give_a_readable_error(tiny_data_dir, args, message):
    result = CliRunner().invoke(app, ["--data-dir", str(tiny_data_dir), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_baselines_only_with_repeats_as_the_primary_setting(tiny_data_dir):
    report = compute_evaluation(EvaluateParams(data_dir=str(tiny_data_dir), exclude_seen=False,
                                               baselines="mostpop,transitions", n_resamples=10), oracle=False).as_dict()
    row = report["rows"][0]["metrics"]
    assert "recall_at_20_seen_excluded" in row and "recall_at_20_with_repeats" not in row
    assert row["repetition_rate_at_20"] > 0 and row["repetition_rate_at_20_seen_excluded"] == 0


def test_a_single_model_run_carries_the_model_keys_on_the_parent(tiny_data_dir, logged_checkpoint):
    sasrec_uri = logged_checkpoint.split(",")[0]
    result = CliRunner().invoke(app, ["--data-dir", str(tiny_data_dir), "--model-uri", sasrec_uri,
                                      "--baselines", "false", "--n-resamples", "10"])
    assert result.exit_code == 0, result.output
    parent = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.stage = 'evaluate'", order_by=["start_time DESC"],
        output_format="list",
    )
    parent = next(r for r in parent if "mlflow.parentRunId" not in r.data.tags)
    assert_grouped(parent.data.metrics)
    for key in DESIGN_KEYS:
        main = f"test_{key}" if f"test_{key}" in HEADLINE else f"more/test_{key}"
        assert main in parent.data.metrics and f"with_repeats/test_{key}" in parent.data.metrics
    assert "oracle/test_recall_at_20_ratio" in parent.data.metrics


def test_only_the_headline_keys_are_flat_and_each_other_key_names_its_group():
    row = ScorerRow(
        name="sasrec", kind="model", seconds=2.5, cases_per_second=10.0,
        metrics={"recall_at_20": 0.4, "ndcg_at_10": 0.3, "mrr_at_20": 0.2, "coverage_at_100": 0.6,
                 "repetition_rate_at_20": 0.0, "recall_at_10": 0.35, "cont_recall_at_20": 0.1,
                 "artist_diversity_at_20": 0.9, "popularity_bias_at_20": 0.5, "recall_at_20_with_repeats": 0.45,
                 "repetition_rate_at_20_with_repeats": 0.1, "recall_at_20_oracle_ratio": 0.8,
                 "recall_at_20_with_repeats_oracle_ratio": 0.7, "num_cases": 100.0, "num_sessions": 20.0,
                 "repeat_target_share": 0.05},
        ci={"ndcg_at_10": {"low": 0.25, "high": 0.35}},
        context={"ndcg_at_10": {"true": 0.3, "shuffled": 0.28, "lift": 0.02, "low": 0.0, "high": 0.04,
                                "p_value": 0.04}},
        oracle={"recall_at_20": 0.5, "recall_at_20_with_repeats": 0.64},
    )
    keys = row_metric_keys(row, "val")
    assert_grouped(keys, {f"val_{m}" for m in K.HEADLINE})
    assert keys == {
        "val_recall_at_20": 0.4, "val_ndcg_at_10": 0.3, "val_mrr_at_20": 0.2, "val_coverage_at_100": 0.6,
        "val_repetition_rate_at_20": 0.0,
        "more/val_recall_at_10": 0.35, "more/val_cont_recall_at_20": 0.1, "more/val_artist_diversity_at_20": 0.9,
        "more/val_popularity_bias_at_20": 0.5,
        "with_repeats/val_recall_at_20": 0.45, "with_repeats/val_repetition_rate_at_20": 0.1,
        "oracle/val_recall_at_20_ratio": 0.8, "oracle/val_recall_at_20_with_repeats_ratio": 0.7,
        "oracle/val_recall_at_20": 0.5, "oracle/val_recall_at_20_with_repeats": 0.64,
        "info/val_num_cases": 100.0, "info/val_num_sessions": 20.0, "info/val_repeat_target_share": 0.05,
        "info/val_eval_seconds": 2.5,
        "ci/val_ndcg_at_10_low": 0.25, "ci/val_ndcg_at_10_high": 0.35,
        "context/val_ndcg_at_10_lift": 0.02, "context/val_ndcg_at_10_shuffled": 0.28,
        "context/val_ndcg_at_10_lift_p_value": 0.04,
    }
    # the primary metrics are headline keys; repeats allowed as the run's setting, the other one is its group
    assert set(PRIMARY) <= set(K.HEADLINE)
    assert K.metric_key("test", "recall_at_20_seen_excluded") == "seen_excluded/test_recall_at_20"


def _comparison(a, b, metric, diff, significant=True):
    return {"a": a, "b": b, "metric": metric, "mean_diff": diff, "significant": significant}


def test_beats_every_baseline_ignores_the_other_models():
    comparisons = [_comparison("sasrec", "sknn", m, 0.03) for m in ("recall_at_20", "ndcg_at_10", "mrr_at_20")]
    # losing to the other model by a significant margin is not losing to a baseline
    comparisons += [_comparison("sasrec", "gru4rec", m, -0.001) for m in ("recall_at_20", "ndcg_at_10", "mrr_at_20")]
    comparisons += [_comparison("sasrec", "transitions", "recall_at_20", 0.2),
                    _comparison("sasrec", "transitions", "ndcg_at_10", 0.01, significant=False),
                    _comparison("sasrec", "transitions", "mrr_at_20", -0.02)]
    assert beats_every_baseline("sasrec", comparisons, {"sknn", "transitions"}) == {
        "recall_at_20": True, "ndcg_at_10": False, "mrr_at_20": False}
    assert beats_every_baseline("sasrec", comparisons[:6], {"sknn"}) == {
        "recall_at_20": True, "ndcg_at_10": True, "mrr_at_20": True}
    assert beats_every_baseline("sasrec", comparisons, set()) == {
        "recall_at_20": None, "ndcg_at_10": None, "mrr_at_20": None}
