"""The tiny `main` pipeline end to end, then the gate, force and rollback on its registry."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import textwrap

import mlflow
import pytest
import torch

from playlistai.config import get_settings
from playlistai.inference import ModelPackageError
from playlistai.registry.pyfunc import load_recommender
from playlistai.tracking import stage_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "playlistai"


def production(client) -> str:
    return str(client.get_model_version_by_alias(NAME, get_settings().MODEL_ALIAS).version)


def test_registry_tiny_main_leaves_a_production_model(tiny_pipeline):
    _, main_run = tiny_pipeline
    client = mlflow.MlflowClient()
    assert main_run.info.status == "FINISHED"
    for key in ("size", "epochs", "models", "num_workers", "data_dir"):
        assert key in main_run.data.params, key
    children = client.search_runs([main_run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{main_run.info.run_id}'")
    names = {r.data.tags.get("mlflow.runName") for r in children}
    assert {"data", "preprocess", "splits", "train-sasrec", "train-gru4rec", "evaluate-val",
            "evaluate-test", "register"} <= names
    assert all(r.info.status == "FINISHED" for r in children)

    assert production(client) == main_run.data.tags["registered_version"]
    mv = client.get_model_version(NAME, production(client))
    assert mv.tags["gate_decision"] == "promoted" and mv.tags["gate"] == "promoted (first version)"
    assert "no production version yet" in mv.tags["gate_reason"]
    assert mv.tags["model_family"] == main_run.data.tags["best_model"]
    for key in ("data_hash", "git_commit", "train_run_id", "test_ndcg_at_10", "test_recall_at_20", "ann_index_type"):
        assert mv.tags.get(key), key
    assert client.get_model_version_by_alias(NAME, "challenger").version == mv.version
    # the lock used while moving the alias is gone
    assert not [m.name for m in client.search_registered_models() if m.name.endswith("promotion-lock")]


def _scorer_metrics(client, eval_run) -> dict[str, dict[str, float]]:
    """The metrics of an evaluation run's scorer children, by scorer."""
    children = client.search_runs([eval_run.info.experiment_id], f"tags.mlflow.parentRunId = '{eval_run.info.run_id}'")
    return {r.data.tags["scorer"]: r.data.metrics for r in children}


def test_registry_tiny_main_chooses_on_validation_and_reports_test_from_one_run(tiny_pipeline):
    _, main_run = tiny_pipeline
    client = mlflow.MlflowClient()
    tags, metrics = main_run.data.tags, main_run.data.metrics
    models = main_run.data.params["models"].split(",")
    chosen, runner_up = tags["best_model"], tags["runner_up"]
    assert tags["chosen_on"] == "val"
    assert {chosen, runner_up} == set(models)
    train_runs = {m: r for r in client.search_runs([main_run.info.experiment_id],
                                                   f"tags.mlflow.parentRunId = '{main_run.info.run_id}'")
                  for m in models if r.data.tags.get("mlflow.runName") == f"train-{m}"}
    assert tags["best_train_run_id"] == train_runs[chosen].info.run_id

    # one evaluation on val, all models on the same cases, no baselines; the choice is its best nDCG@10
    val_run = client.get_run(tags["val_eval_run_id"])
    assert val_run.data.params["split"] == "val"
    assert sorted(val_run.data.params["model_uri"].split(",")) == sorted(
        f"runs:/{r.info.run_id}/checkpoint" for r in train_runs.values())
    val = _scorer_metrics(client, val_run)
    assert set(val) == set(models) | {"oracle"}
    for m in models:
        assert metrics[f"{m}_val_ndcg_at_10"] == pytest.approx(val[m]["val_ndcg_at_10"])
    assert val[chosen]["val_ndcg_at_10"] >= val[runner_up]["val_ndcg_at_10"]
    if val[chosen]["val_ndcg_at_10"] == val[runner_up]["val_ndcg_at_10"]:
        assert models.index(chosen) < models.index(runner_up), "a tie goes to the first of models"
    diff = metrics["compare/val_ndcg_at_10_diff_chosen_vs_runner_up"]
    assert diff == pytest.approx(val_run.data.metrics[f"compare/val_ndcg_at_10_diff_{chosen}_vs_{runner_up}"])
    assert metrics["compare/val_ndcg_at_10_diff_chosen_vs_runner_up_p_value"] == pytest.approx(
        val_run.data.metrics[f"compare/val_ndcg_at_10_diff_{chosen}_vs_{runner_up}_p_value"])
    low, high = (metrics[f"compare/val_ndcg_at_10_diff_chosen_vs_runner_up_{k}"] for k in ("low", "high"))
    assert low <= diff <= high
    beats = tags["chosen_beats_runner_up_on_val"]
    assert beats == ("true" if low > 0 else "false")
    reason = tags["selection_reason"]
    assert reason.startswith(f"chosen on validation: {chosen} vs {runner_up} nDCG@10 {diff:+.4f}")
    assert reason.endswith("not significant") == (beats == "false")

    # one evaluation on test with every model and the baselines: the parent's test figures are its own
    test_run = client.get_run(tags["test_eval_run_id"])
    assert test_run.data.params["split"] == "test"
    assert test_run.data.params["model_uri"] == val_run.data.params["model_uri"]
    on_test = _scorer_metrics(client, test_run)
    assert set(models) | {"mostpop", tags["best_baseline"]} <= set(on_test)
    for m in models:
        for key in ("test_ndcg_at_10", "test_recall_at_20", "test_mrr_at_20"):
            assert metrics[f"{m}_{key}"] == pytest.approx(on_test[m][key]), (m, key)
    assert metrics["compare/test_ndcg_at_10_diff_chosen_vs_best_baseline"] == pytest.approx(
        test_run.data.metrics[f"compare/test_ndcg_at_10_diff_{chosen}_vs_{tags['best_baseline']}"])
    # the main run's flat keys are its headline: each model's figures; the rest is grouped
    flat = {k for k in metrics if "/" not in k}
    assert flat == {f"{m}_{key}" for m in models
                    for key in ("val_ndcg_at_10", "test_ndcg_at_10", "test_recall_at_20", "test_mrr_at_20")}

    # the register stage names the comparison the choice was made on
    assert train_runs[chosen].data.tags["selection_reason"] == reason
    mv = client.get_model_version(NAME, tags["registered_version"])
    assert mv.tags["gate_reason"].startswith(reason + "; ")
    assert tags["gate_reason"] == mv.tags["gate_reason"]
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{main_run.info.run_id}/pipeline/summary.json"))
    assert summary["chosen"]["on"] == "val" and summary["chosen"]["model"] == chosen
    assert summary["test_eval_run_id"] == test_run.info.run_id


def test_registry_tiny_main_describes_its_run_with_the_summary_block(tiny_pipeline):
    _, main_run = tiny_pipeline
    tags = main_run.data.tags
    note = tags["mlflow.note.content"]
    lines = note.splitlines()
    assert lines[0].startswith("PlayListAI pipeline done in ")
    for model in main_run.data.params["models"].split(","):
        line = next(x for x in lines if x.strip().startswith(f"{model} "))
        assert "nDCG@10 " in line and "Recall@20 " in line, line
    assert any(x.strip().startswith(f"{tags['best_baseline']} ") and x.endswith("(best baseline)") for x in lines)
    assert f"chosen on validation: {tags['best_model']} " in note
    on_test = next(x for x in lines if x.startswith(f"on test: {tags['best_model']} "))
    assert f" the best baseline, {tags['best_baseline']}: nDCG@10 " in on_test
    assert f"gate: {tags['gate_decision']} v{tags['registered_version']}: {tags['gate_reason']}" in lines
    assert any(x.startswith("runs:    mlflow ui --backend-store-uri ") for x in lines)
    report = next(x for x in lines if x.startswith("report:  ")).removeprefix("report:  ")
    assert report.endswith(f"{tags['test_eval_run_id']}/artifacts/evaluation/report.md")
    assert open(report).read().strip()
    curl = shlex.split(lines[-1])
    body = json.loads(curl[-1])
    ids = set(load_recommender(f"models:/{NAME}@production").vocab.track_ids)
    assert curl[2].endswith("/continue") and body["tracks"] and set(body["tracks"]) <= ids


def test_registry_production_model_recommends_in_a_fresh_process(tiny_pipeline, make_stage_env):
    """Nothing but the installed package: `mlflow.pyfunc.load_model` on the alias, then predict."""
    recommender = load_recommender(f"models:/{NAME}@production")
    history = recommender.vocab.track_ids[10:14]
    script = textwrap.dedent(f"""
        import json, mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/{NAME}@production")
        out = model.predict(pd.DataFrame({{"tracks": [{history!r}], "k": [7], "hour": [21], "dow": [4]}}))
        print(json.dumps({{"tracks": list(out["track_ids"][0]), "fallback": bool(out["fallback"][0])}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd="/", env=make_stage_env(), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(answer["tracks"]) == 7 and len(set(answer["tracks"])) == 7
    assert not set(answer["tracks"]) & set(history)
    assert answer["fallback"] is False


def _untrained_run(recommender, directory) -> str:
    """A 'training run' whose checkpoint is an untrained model: a challenger that must lose."""
    from playlistai.models import build_model
    from playlistai.models.checkpoint import save_checkpoint

    torch.manual_seed(123)
    model = build_model(recommender.model.config)
    with stage_run("train", {"model": model.config.family, "epochs": 0}, run_name="untrained") as run:
        path = save_checkpoint(directory, model, recommender.vocab)
        mlflow.log_artifacts(str(path), "checkpoint")
    return run.info.run_id


def _register(**kwargs) -> dict:
    from playlistai.registry.stage import run_register

    with stage_run("register", {k: str(v) for k, v in kwargs.items()}):
        return run_register(n_resamples=200, **kwargs)


def test_registry_weaker_challenger_is_rejected_then_force_and_rollback(tiny_pipeline, tmp_path):
    data_dir, main_run = tiny_pipeline
    client = mlflow.MlflowClient()
    champion = production(client)
    weak_run = _untrained_run(load_recommender(f"models:/{NAME}/{champion}"), tmp_path / "untrained")

    summary = _register(data_dir=data_dir, run_id=weak_run)
    weak = summary["version"]
    assert int(weak) > int(champion)
    mv = client.get_model_version(NAME, weak)
    assert mv.tags["gate_decision"] == "rejected"
    assert "not significantly better" in mv.tags["gate_reason"]
    assert float(mv.tags["gate_mean_diff"]) < 0
    assert mv.tags["gate"].startswith(f"kept v{champion} (-"), mv.tags["gate"]
    assert mv.tags["gate_compared_with"] == champion
    assert production(client) == champion, "a rejected challenger never takes production"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == weak
    # the decision is also a run artifact of the register run
    decision = json.loads(mlflow.artifacts.load_text(f"runs:/{mv.tags['register_run_id']}/gate/decision.json"))
    assert decision["decision"]["decision"] == "rejected"

    forced = _register(data_dir=data_dir, version=weak, promote="force")
    assert forced["decision"]["decision"] == "forced" and production(client) == weak
    rolled = _register(data_dir=data_dir, version=champion, promote="force")
    assert "rollback" in rolled["decision"]["reason"] and production(client) == champion
    assert client.get_model_version(NAME, champion).tags["gate"] == f"rollback from v{weak}"
    assert load_recommender(f"models:/{NAME}@production").model_version == champion

    # promote=never records a comparison and leaves the alias alone
    never = _register(data_dir=data_dir, version=weak, promote="never")
    assert never["decision"]["decision"] == "not_promoted" and production(client) == champion
    assert never["decision"]["comparison"]["challenger_better"] is False


def test_registry_corrupt_or_missing_artifact_names_the_file(tiny_pipeline, tmp_path):
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@production", dst_path=str(tmp_path / "m"))
    broken = tmp_path / "broken"
    shutil.copytree(local, broken)
    (broken / "artifacts" / "package" / "ann.faiss").unlink()
    with pytest.raises(ModelPackageError, match="missing ann.faiss \\(the FAISS index\\)"):
        load_recommender(str(broken))
    shutil.rmtree(broken)
    shutil.copytree(local, broken)
    (broken / "artifacts" / "package" / "vocab.json").write_text('{"track_ids": [')
    with pytest.raises(ModelPackageError, match="vocab.json.*corrupt"):
        load_recommender(str(broken))


def test_registry_pyfunc_predict_accepts_optional_switches(tiny_pipeline):
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@production")
    assert model.metadata.signature is not None
    assert model.metadata.get_input_schema().input_names()[:4] == ["tracks", "k", "hour", "dow"]
    ids = load_recommender(f"models:/{NAME}@production").vocab.track_ids
    out = model.predict(pd.DataFrame({
        "tracks": [ids[:3], ids[:3], ["nope"]],
        "k": [20, 20, 4],
        "hour": [9, 9, 23],
        "dow": [2, 2, 6],
        "use_ann": [False, True, False],
        "max_per_artist": [0, 0, 1],
    }))
    assert list(out.columns) == ["track_ids", "scores", "unknown_tracks", "fallback"]
    exact, approx = list(out["track_ids"][0]), list(out["track_ids"][1])
    assert len(set(exact) & set(approx)) / 20 >= 0.95
    assert list(out["unknown_tracks"][2]) == ["nope"] and bool(out["fallback"][2]) and len(out["track_ids"][2]) == 4
