"""The `evaluate` entry point on the tiny synthetic data: every key of docs/ARCHITECTURE.md
("Metrics") for every scorer."""

import json

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from entrypoints.evaluate import app
from playlistai.data.sequences import load_vocab
from playlistai.evaluation.bootstrap import paired_bootstrap
from playlistai.evaluation.stage import (
    EvaluateParams,
    LeakageError,
    beats_every_baseline,
    check_split,
    compute_evaluation,
)
from playlistai.models import ModelConfig, build_model
from playlistai.models.checkpoint import save_checkpoint
from playlistai.tracking import configure_mlflow, stage_run

DESIGN_KEYS = [
    "recall_at_20", "ndcg_at_10", "mrr_at_20", "cont_recall_at_20", "coverage_at_100",
    "repetition_rate_at_20", "artist_diversity_at_20", "popularity_bias_at_20",
]
SCORERS = {"sasrec", "gru4rec_noctx", "mostpop", "mostpop_hour", "transitions", "sknn", "oracle"}


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
        for key in DESIGN_KEYS:
            assert f"test_{key}" in logged, (name, key)
            assert f"test_{key}_with_repeats" in logged, (name, key)
            assert 0.0 <= logged[f"test_{key}"] <= 1.0, (name, key)
        for key in ("recall_at_20", "ndcg_at_10"):
            assert logged[f"test_{key}_ci_low"] <= logged[f"test_{key}"] <= logged[f"test_{key}_ci_high"]
            assert f"test_oracle_{key}" in logged
            if name != "oracle":
                assert f"test_{key}_oracle_ratio" in logged
        assert "test_recall_at_5" in logged and "test_repeat_target_share" in logged
    # the context ablation of the model, the model's keys and the oracle's on the parent run
    assert "test_context_lift_ndcg_at_10" in by_name["sasrec"].data.metrics
    assert "test_context_lift_ndcg_at_10" in by_name["gru4rec_noctx"].data.metrics
    assert "test_oracle_recall_at_20" in parent.data.metrics
    assert "test_ndcg_at_10_diff_sasrec_vs_gru4rec_noctx" in parent.data.metrics
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
    for key in DESIGN_KEYS:
        assert f"test_{key}" in parent.data.metrics and f"test_{key}_with_repeats" in parent.data.metrics
    assert "test_recall_at_20_oracle_ratio" in parent.data.metrics


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
