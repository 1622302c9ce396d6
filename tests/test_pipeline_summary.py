"""What `main` concludes from its evaluation reports, and the block it ends with: the choice on
validation (ties to the first of `models`), the test figures beside the best baseline, the gate,
and the commands to look further (MLflow UI, the report, a request the API answers)."""

from __future__ import annotations

import json
import shlex

import pytest

from playlistai.pipeline import choose_model, example_request, figures_on_test, selection_reason, summary_text
from serving.schemas import ContinueRequest

TRAINED = {"sasrec": "r1", "gru4rec": "r2"}


def row(name: str, kind: str, ndcg: float, recall: float = 0.2) -> dict:
    ci = {"ndcg_at_10": {"low": ndcg - 0.01, "high": ndcg + 0.01},
          "recall_at_20": {"low": recall - 0.02, "high": recall + 0.02}}
    return {"name": name, "kind": kind, "metrics": {"ndcg_at_10": ndcg, "recall_at_20": recall, "mrr_at_20": 0.05},
            "ci": ci}


def comparison(a: str, b: str, diff: float, low: float, high: float, p: float) -> dict:
    return {"a": a, "b": b, "metric": "ndcg_at_10", "mean_diff": diff, "low": low, "high": high, "p_value": p,
            "significant": low > 0 or high < 0}


def report(split: str, rows: list[dict], comparisons: list[dict], names=("sasrec", "gru4rec")) -> dict:
    models = {name: {"model_uri": f"runs:/{run}/checkpoint"} for name, run in zip(names, TRAINED.values(), strict=True)}
    return {"split": split, "models": models, "rows": rows, "comparisons": comparisons}


def test_the_best_on_validation_is_chosen_with_its_paired_comparison():
    val = report("val", [row("sasrec", "model", 0.10), row("gru4rec", "model", 0.12)],
                 [comparison("gru4rec", "sasrec", 0.02, 0.01, 0.03, 0.002),
                  comparison("sasrec", "gru4rec", -0.02, -0.03, -0.01, 0.002)])
    choice = choose_model(val, TRAINED)
    assert (choice["model"], choice["runner_up"], choice["on"]) == ("gru4rec", "sasrec", "val")
    assert choice["beats_runner_up"] is True and choice["comparison"]["mean_diff"] == 0.02
    assert choice["reason"] == ("chosen on validation: gru4rec vs sasrec nDCG@10 +0.0200 [+0.0100, +0.0300], "
                                "p=0.002, significant")


def test_a_tie_goes_to_the_first_of_models_and_is_not_significant():
    # rows named after the checkpoints' configs (a context-free SASRec): found by URI, not by name
    val = report("val", [row("sasrec_noctx", "model", 0.11), row("gru4rec", "model", 0.11)],
                 [comparison("sasrec_noctx", "gru4rec", 0.0, -0.004, 0.004, 1.0)], names=("sasrec_noctx", "gru4rec"))
    choice = choose_model(val, TRAINED)
    assert choice["model"] == "sasrec" and choice["tie"] and choice["beats_runner_up"] is False
    assert choice["reason"].endswith("not significant; a tie: the first of models is taken")


def test_one_model_is_no_choice():
    assert selection_reason({"model": "gru4rec", "runner_up": None}) == "only gru4rec was trained: no choice made"


def test_test_figures_and_the_best_baseline():
    test = report("test", [row("sasrec", "model", 0.10, 0.30), row("gru4rec", "model", 0.12, 0.31),
                           row("mostpop", "baseline", 0.02), row("sknn", "baseline", 0.09), row("oracle", "oracle", 0.5)],
                  [comparison("gru4rec", "sknn", 0.03, 0.01, 0.05, 0.004)])
    models, baseline = figures_on_test(test, TRAINED, "gru4rec")
    assert models["sasrec"]["test_ndcg_at_10"] == 0.10 and models["gru4rec"]["test_recall_at_20_ci_high"] == 0.33
    assert baseline["name"] == "sknn" and baseline["beaten"] is True
    assert baseline["comparison"]["mean_diff"] == 0.03
    assert figures_on_test(report("test", test["rows"][:2], []), TRAINED, "gru4rec")[1] is None


def summary(**changes) -> dict:
    val = report("val", [row("sasrec", "model", 0.104), row("gru4rec", "model", 0.100)],
                 [comparison("sasrec", "gru4rec", 0.004, -0.001, 0.009, 0.12)])
    test = report("test", [row("sasrec", "model", 0.1234, 0.3012), row("gru4rec", "model", 0.1190, 0.2950),
                           row("sknn", "baseline", 0.0950, 0.2500)],
                  [comparison("sasrec", "sknn", 0.0284, 0.0201, 0.0370, 0.002)])
    choice = choose_model(val, TRAINED)
    models, baseline = figures_on_test(test, TRAINED, choice["model"])
    out = {
        "models": models, "best_model": choice["model"], "chosen": choice, "best_baseline": baseline,
        "registered_version": "3", "gate_decision": "promoted",
        "gate_reason": choice["reason"] + "; there is no production version yet",
        "data_dir": "data/tiny", "data_warning": None, "seconds": 187.4,
        "report": "/repo/mlartifacts/1/abc/artifacts/evaluation/report.md",
        "example_request": {"tracks": ["t000117", "t000042", "t000513"], "k": 10, "context": {"hour": 21, "dow": 5}},
    }
    return {**out, **changes}


def test_the_summary_block_says_what_was_found_and_where_to_look():
    text = summary_text(summary(), ui_command="mlflow ui --backend-store-uri sqlite:///mlflow.db",
                        run_location="run abc in experiment 'playlistai'")
    lines = text.splitlines()
    assert lines[0] == "PlayListAI pipeline done in 3m 07s (data in data/tiny)"
    sasrec = next(line for line in lines if line.strip().startswith("sasrec "))
    assert "nDCG@10 0.1234 [0.1134, 0.1334]" in sasrec and "Recall@20 0.3012 [0.2812, 0.3212]" in sasrec
    assert sasrec.endswith("<- chosen")
    assert any(line.strip().startswith("gru4rec ") and "nDCG@10 0.1190" in line for line in lines)
    assert any(line.strip().startswith("sknn ") and line.endswith("(best baseline)") for line in lines)
    assert ("chosen on validation: sasrec does not beat gru4rec: nDCG@10 +0.0040 [-0.0010, +0.0090], p=0.12, "
            "not significant") in lines
    assert "on test: sasrec beats the best baseline, sknn: nDCG@10 +0.0284 [+0.0201, +0.0370], p=0.002, significant" in lines
    assert any(line.startswith("gate: promoted v3: chosen on validation: sasrec vs gru4rec") for line in lines)
    assert "runs:    mlflow ui --backend-store-uri sqlite:///mlflow.db  (run abc in experiment 'playlistai')" in lines
    assert "report:  /repo/mlartifacts/1/abc/artifacts/evaluation/report.md" in lines
    curl = shlex.split(lines[-1])
    assert curl[:3] == ["curl", "-s", "localhost:8088/continue"] and curl[-2] == "-d"
    body = ContinueRequest.model_validate(json.loads(curl[-1]))
    assert body.tracks == ["t000117", "t000042", "t000513"] and body.context.hour == 21
    assert not any(line.startswith("next: ") for line in lines), "main prints its `next:` line itself"


def test_a_model_worse_than_a_baseline_is_said_to_be_worse():
    s = summary()
    s["best_baseline"] = {**s["best_baseline"], "comparison": comparison("sasrec", "sknn", -0.08, -0.10, -0.06, 0.002)}
    text = summary_text(s, ui_command="mlflow ui")
    assert ("on test: sasrec is beaten by the best baseline, sknn: nDCG@10 -0.0800 [-0.1000, -0.0600], p=0.002, "
            "significantly worse") in text.splitlines()


def test_the_summary_block_without_baselines_a_choice_or_local_artifacts():
    one = summary(best_model="gru4rec", chosen={"model": "gru4rec", "runner_up": None}, best_baseline=None,
                  models={"gru4rec": summary()["models"]["gru4rec"]}, report="mlflow-artifacts:/1/abc/report.md",
                  example_request=None, data_warning="tiny data: 37 tracks", seconds=42.0)
    text = summary_text(one, ui_command="open http://mlflow:5000", api_address="localhost:18088")
    assert "done in 42s" in text.splitlines()[0]
    assert "chosen: gru4rec, the only model trained (nothing to compare on validation)" in text
    assert "on test: no baseline evaluated (baselines=false)" in text
    assert "warning: tiny data: 37 tracks" in text
    assert "report:  mlflow artifacts download -u mlflow-artifacts:/1/abc/report.md" in text
    assert "curl" not in text


def test_the_example_request_is_a_test_session_the_model_knows(tiny_data_dir):
    from playlistai.data.sequences import load_split, load_vocab

    request = example_request(str(tiny_data_dir))
    body = ContinueRequest.model_validate(request)
    vocab = load_vocab(tiny_data_dir)
    assert 2 <= len(body.tracks) <= 5 and all(t in vocab for t in body.tracks)
    test = load_split(tiny_data_dir, "test").sort_values(["session_id", "pos"])
    known = test[test["track_id"].map(vocab.__contains__)].groupby("session_id")["track_id"].apply(list)
    # the opening of a session that goes on: the answer can be checked against what came next
    assert any(s[: len(body.tracks)] == body.tracks and len(s) > len(body.tracks) for s in known)
    assert example_request(str(tiny_data_dir / "nothing-here")) is None


@pytest.mark.parametrize(("seconds", "text"), [(5.2, "5s"), (65, "1m 05s"), (3600, "60m 00s")])
def test_durations(seconds, text):
    from playlistai.pipeline import _fmt_seconds

    assert _fmt_seconds(seconds) == text
