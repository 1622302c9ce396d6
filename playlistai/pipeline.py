"""The whole pipeline as one MLflow run: data -> preprocess -> splits -> train each model ->
evaluate them together on validation -> choose -> evaluate them with the baselines on test ->
register the chosen one -> promotion gate.

Each stage is the project's own entry point, launched with `mlflow.projects.run` from inside the
parent run, so MLflow records it as a child run with its own params, metrics and artifacts, in
exactly the form a user gets from `mlflow run . -e <stage>`. Stages run in subprocesses with the
current environment (`env_manager="local"`).

The model is chosen on the validation split, never on test: one `evaluate` run on `val` scores
every trained model on the same cases (paired bootstrap between them), the best `val_ndcg_at_10`
wins (the first of `models` on a tie), and the parent run records whether it beats the runner-up
outside the paired interval. Only then does one `evaluate` run on `test` score all the models and
the baselines; the test figures are reported, never used to choose. A model picked on test would
carry an optimistic test score, the very figure the gate and the reader rely on. The reason for
the choice is a tag of the chosen training run (SELECTION_TAG), which the register stage puts in
front of the gate's reason.

The parent keeps the summary: each model's test metrics, the choice and its validation comparison
(`chosen_on=val`), the chosen model against the best baseline on test, the registered version and
the gate's decision (tags, metrics, `pipeline/summary.json`); `summary_text` is the block `main`
prints at its end and sets as the run's description.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import ExecutionException

from playlistai.data.stages import SourceParams
from playlistai.evaluation.keys import compare_key
from playlistai.params import param
from playlistai.registry import SELECTION_TAG

SELECTION_METRIC = "val_ndcg_at_10"
# the parent's paired differences, in the evaluation's `compare/` group (evaluation/keys.py), apart
# from the headline keys: compare/val_ndcg_at_10_diff_chosen_vs_runner_up and ..._low, _high, _p_value
VAL_DIFF_KEY = compare_key("val", "ndcg_at_10", "chosen", "runner_up")
TEST_DIFF_KEY = compare_key("test", "ndcg_at_10", "chosen", "best_baseline")
# the evaluation report's unprefixed names of the metrics the summary shows
NDCG, RECALL, MRR = "ndcg_at_10", "recall_at_20", "mrr_at_20"
REPORTED = (NDCG, RECALL, MRR)
REPORT_ARTIFACT = "evaluation/report.json"
# the stages `main` runs see this in their environment (entrypoints.common.IN_PIPELINE_ENV): their next
# step is the pipeline's, so they print no "next:" line of their own
IN_PIPELINE_ENV = "PLAYLISTAI_IN_PIPELINE"
# below these, a dataset gives metrics too noisy to choose a model by (wide intervals, few cases)
MIN_VOCAB_TRACKS = 100
MIN_TEST_SESSIONS = 100


class PipelineError(RuntimeError):
    """A stage failed; the message names it and its run."""


@dataclass
class MainParams(SourceParams):
    """The `main` entry point's params (MLproject): the data stage's source params, then the other
    stages'; 0, -1 and "" leave a value to the stage that takes it."""

    models: str = param("sasrec,gru4rec", "models to train, comma-separated; the best on validation is registered")
    epochs: int = param(0, "0 = the train stage's default", minimum=0)
    num_workers: int = param(0, "Ray Train workers; 0 = the train stage's default", minimum=0)
    trainer: str = param("", "ray | local; empty = the train stage's default")
    d_model: int = param(0, "0 = the train stage's default (MODEL_D)", minimum=0)
    batch_size: int = param(0, "0 = the train stage's default", minimum=0)
    patience: int = param(-1, "-1 = the train stage's default", minimum=-1)
    baselines: bool = param(True, "evaluate the baselines beside the models")
    promote: str = param("auto", "auto | force | never (the register stage's gate)")
    n_resamples: int = param(1000, "bootstrap resamples (evaluation and gate)", minimum=10)
    engine: str = param("pandas", "pandas | ray: the engine of the preprocess and splits stages")


def parse_models(value: str | Sequence[str]) -> list[str]:
    from playlistai.models.config import canonical_family  # imports torch: only when the names are checked

    names = value.split(",") if isinstance(value, str) else list(value)
    models = list(dict.fromkeys(canonical_family(n) for n in names if str(n).strip()))
    if not models:
        raise ValueError("models: name at least one of sasrec, gru4rec")
    return models


def tiny_data_warning(splits_metrics: Mapping[str, float]) -> str | None:
    """One line when the splits are too small for the evaluation to mean much, else None."""
    tracks = int(splits_metrics.get("vocab_size", 0))
    test_sessions = int(splits_metrics.get("test_sessions", 0))
    if tracks >= MIN_VOCAB_TRACKS and test_sessions >= MIN_TEST_SESSIONS:
        return None
    return (f"tiny data: {tracks:,} tracks in the vocabulary and {test_sessions:,} test sessions (under "
            f"{MIN_VOCAB_TRACKS:,} and {MIN_TEST_SESSIONS:,}): the models will train, but their test metrics "
            f"will have wide confidence intervals and comparisons between them will be unreliable; a log with more "
            f"users and plays (or a lower vocab_min_freq) gives metrics to trust")


def _as_param(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def run_stage(project_uri: str, entry_point: str, params: Mapping, run_name: str) -> str:
    """Run one entry point as a child of the active run; return its run id."""
    parent = mlflow.active_run()
    t0 = time.perf_counter()
    previous = os.environ.get(IN_PIPELINE_ENV)
    os.environ[IN_PIPELINE_ENV] = "1"     # the stage's process inherits it
    try:
        submitted = mlflow.projects.run(
            project_uri,
            entry_point=entry_point,
            parameters={k: _as_param(v) for k, v in params.items() if v is not None and v != ""},
            env_manager="local",
            experiment_id=parent.info.experiment_id if parent else None,
            run_name=run_name,
            synchronous=True,
        )
    except ExecutionException as exc:
        raise PipelineError(f"stage `{run_name}` failed: {exc}") from None
    finally:
        if previous is None:
            os.environ.pop(IN_PIPELINE_ENV, None)
        else:
            os.environ[IN_PIPELINE_ENV] = previous
    # the stage names its run after itself; the pipeline's name says which model it was for
    mlflow.MlflowClient().set_tag(submitted.run_id, "mlflow.runName", run_name)
    # grouped under one prefix, so that MLflow's UI keeps them apart from the models' headline metrics
    mlflow.log_metric(f"stage_seconds/{run_name.replace('-', '_')}", time.perf_counter() - t0)
    return submitted.run_id


# -- reading the evaluation reports ---------------------------------------------------------------


def checkpoint_uri(train_run_id: str) -> str:
    return f"runs:/{train_run_id}/checkpoint"


def report_rows(report: Mapping, trained: Mapping[str, str]) -> dict[str, dict]:
    """Each trained model's row of an evaluation report, found by its checkpoint URI (the report
    names a row after the checkpoint's config, which need not be the name in `models`)."""
    by_uri = {meta["model_uri"]: name for name, meta in report.get("models", {}).items()}
    rows = {row["name"]: row for row in report["rows"]}
    out = {}
    for model, run_id in trained.items():
        name = by_uri.get(checkpoint_uri(run_id))
        if name is None or name not in rows:
            raise PipelineError(f"the {report.get('split')} evaluation has no row for {model} ({checkpoint_uri(run_id)})")
        out[model] = rows[name]
    return out


def find_comparison(report: Mapping, a: str, b: str, metric: str = NDCG) -> dict | None:
    """The paired bootstrap of row `a` minus row `b` on `metric`, as the report holds it."""
    return next((dict(c) for c in report.get("comparisons", [])
                 if c["a"] == a and c["b"] == b and c["metric"] == metric), None)


def _beats(comparison: Mapping | None) -> bool | None:
    """Better outside the paired interval (its low end above 0); None without a comparison."""
    if not comparison or comparison.get("low") is None:
        return None
    return bool(comparison["low"] > 0)


def _fmt_diff(c: Mapping) -> str:
    def num(v):
        return "n/a" if v is None else f"{v:+.4f}"
    p = c.get("p_value")
    return f"{num(c.get('mean_diff'))} [{num(c.get('low'))}, {num(c.get('high'))}], p={'n/a' if p is None else f'{p:.3g}'}"


def _outcome(comparison: Mapping | None) -> tuple[str, str]:
    """(verb, verdict) of A against B: a worse A is said to be worse, not merely 'not significant'."""
    c = comparison or {}
    if c.get("low") is None or c.get("high") is None:
        return "vs", "no interval"
    if c["low"] > 0:
        return "beats", "significant"
    if c["high"] < 0:
        return "is beaten by", "significantly worse"
    return "does not beat", "not significant"


def choose_model(report: Mapping, trained: Mapping[str, str]) -> dict:
    """The model with the best validation nDCG@10 (the first of `trained` on a tie) and its paired
    comparison with the runner-up: what the choice rests on, and whether it is more than noise."""
    rows = report_rows(report, trained)
    scores = {m: rows[m]["metrics"].get(NDCG) for m in trained}
    missing = [m for m, v in scores.items() if v is None]
    if missing:
        raise PipelineError(f"the validation evaluation has no {SELECTION_METRIC} for {', '.join(missing)}")
    order = sorted(trained, key=lambda m: -scores[m])     # stable: ties keep the order of `models`
    chosen, runner_up = order[0], (order[1] if len(order) > 1 else None)
    comparison = find_comparison(report, rows[chosen]["name"], rows[runner_up]["name"]) if runner_up else None
    beats = _beats(comparison)
    ci = {m: rows[m]["ci"].get(NDCG, {}) for m in trained}
    choice = {
        "model": chosen,
        "runner_up": runner_up,
        "on": "val",
        "val_ndcg_at_10": scores,
        "val_ndcg_at_10_ci": {m: [ci[m].get("low"), ci[m].get("high")] for m in trained},
        "comparison": comparison,
        "beats_runner_up": beats,
        "tie": runner_up is not None and scores[chosen] == scores[runner_up],
    }
    choice["reason"] = selection_reason(choice)
    return choice


def selection_reason(choice: Mapping) -> str:
    """One line: the validation comparison the choice was made on."""
    if choice.get("runner_up") is None:
        return f"only {choice['model']} was trained: no choice made"
    c = choice["comparison"] or {}
    tie = "; a tie: the first of models is taken" if choice.get("tie") else ""
    return (f"chosen on validation: {choice['model']} vs {choice['runner_up']} nDCG@10 {_fmt_diff(c)}, "
            f"{_outcome(c)[1]}{tie}")


def figures_on_test(report: Mapping, trained: Mapping[str, str], chosen: str) -> tuple[dict, dict | None]:
    """(each model's test figures, the best baseline's with the chosen model's paired difference to it)."""
    def figures(row: Mapping) -> dict:
        out = {f"test_{k}": row["metrics"].get(k) for k in REPORTED}
        for k in (NDCG, RECALL):
            ci = row["ci"].get(k, {})
            out[f"test_{k}_ci_low"], out[f"test_{k}_ci_high"] = ci.get("low"), ci.get("high")
        return out

    rows = report_rows(report, trained)
    models = {m: figures(rows[m]) for m in trained}
    baselines = [r for r in report["rows"] if r["kind"] == "baseline" and r["metrics"].get(NDCG) is not None]
    if not baselines:
        return models, None
    best = max(baselines, key=lambda r: r["metrics"][NDCG])
    comparison = find_comparison(report, rows[chosen]["name"], best["name"])
    return models, {"name": best["name"], **figures(best), "comparison": comparison, "beaten": _beats(comparison)}


def example_request(data_dir: str, max_tracks: int = 5) -> dict | None:
    """A POST /continue body from the test split: the first session with at least three known
    tracks, its opening tracks as the history and its next play's hour and day as the context."""
    from playlistai.data.sequences import load_split, load_vocab

    try:
        frame = load_split(data_dir, "test")
        vocab = load_vocab(data_dir)
    except FileNotFoundError:
        return None
    frame = frame[frame["track_id"].map(vocab.__contains__)].sort_values(["session_id", "pos"], kind="mergesort")
    for _, session in frame.groupby("session_id", sort=True):
        if len(session) < 3:
            continue
        history = session.iloc[: min(len(session) - 1, max_tracks)]
        nxt = session.iloc[len(history)]
        return {"tracks": [str(t) for t in history["track_id"]], "k": 10,
                "context": {"hour": int(nxt["hour"]), "dow": int(nxt["dow"])}}
    return None


# -- the pipeline ---------------------------------------------------------------------------------


def _load_report(run_id: str) -> dict:
    try:
        return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{REPORT_ARTIFACT}"))
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"evaluation run {run_id} has no {REPORT_ARTIFACT}: {exc.message}") from None


def _finite_metrics(values: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None}


def run_pipeline(
    *,
    data_dir: str,
    size: str = "default",
    seed: int = 42,
    models: Sequence[str] = ("sasrec", "gru4rec"),
    epochs: int | None = None,
    num_workers: int | None = None,
    trainer: str | None = None,
    train_params: Mapping | None = None,
    baselines: bool = True,
    promote: str = "auto",
    n_resamples: int = 1000,
    project_uri: str = ".",
    data_params: Mapping | None = None,
    engine: str = "pandas",
) -> dict:
    """Run every stage under the active (parent) run; return the summary it logs.

    `data_params` go to the `data` stage beside size, seed and data_dir: `source` (a user's log file
    instead of the synthetic data) and its reading params (format, columns, time_unit). Splits too
    small to evaluate on (`tiny_data_warning`; the splits stage prints it) are the summary's and the
    run's `data_warning`. `engine` is the preprocess and splits stages' (pandas or ray)."""
    t_start = time.perf_counter()
    client = mlflow.MlflowClient()
    run_stage(project_uri, "data", {"size": size, "seed": seed, "data_dir": data_dir, **(data_params or {})}, "data")
    on_ray = {"engine": engine} if engine != "pandas" else {}
    run_stage(project_uri, "preprocess", {"data_dir": data_dir, **on_ray}, "preprocess")
    splits_run = run_stage(project_uri, "splits", {"data_dir": data_dir, **on_ray}, "splits")
    data_warning = tiny_data_warning(client.get_run(splits_run).data.metrics)
    if data_warning:
        mlflow.set_tag("data_warning", data_warning)

    trained: dict[str, str] = {}
    for model in models:
        params = {"model": model, "data_dir": data_dir, "seed": seed, "epochs": epochs,
                  "num_workers": num_workers, "trainer": trainer, **(train_params or {})}
        trained[model] = run_stage(project_uri, "train", params, f"train-{model}")
    uris = ",".join(checkpoint_uri(r) for r in trained.values())

    if len(trained) > 1:
        val_run = run_stage(project_uri, "evaluate", {
            "model_uri": uris, "data_dir": data_dir, "split": "val", "baselines": "false", "n_resamples": n_resamples,
        }, "evaluate-val")
        choice = choose_model(_load_report(val_run), trained)
        choice["eval_run_id"] = val_run
    else:
        only = next(iter(trained))
        choice = {"model": only, "runner_up": None, "on": "only_model", "comparison": None,
                  "beats_runner_up": None, "tie": False, "eval_run_id": None}
        choice["reason"] = selection_reason(choice)
    chosen = choice["model"]
    c = choice["comparison"] or {}
    mlflow.set_tags({"chosen_on": choice["on"], "best_model": chosen, "best_train_run_id": trained[chosen],
                     "runner_up": choice["runner_up"] or "", SELECTION_TAG: choice["reason"],
                     "chosen_beats_runner_up_on_val": str(choice["beats_runner_up"]).lower(),
                     "val_eval_run_id": choice["eval_run_id"] or ""})
    mlflow.log_metrics(_finite_metrics({
        **{f"{m}_{SELECTION_METRIC}": v for m, v in choice.get("val_ndcg_at_10", {}).items()},
        **{f"{VAL_DIFF_KEY}{s}": c.get(k)
           for s, k in (("", "mean_diff"), ("_low", "low"), ("_high", "high"), ("_p_value", "p_value"))},
    }))
    client.set_tag(trained[chosen], SELECTION_TAG, choice["reason"])

    test_run = run_stage(project_uri, "evaluate", {
        "model_uri": uris, "data_dir": data_dir, "split": "test", "baselines": "true" if baselines else "false",
        "n_resamples": n_resamples,
    }, "evaluate-test")
    results, best_baseline = figures_on_test(_load_report(test_run), trained, chosen)
    mlflow.log_metrics(_finite_metrics({f"{m}_{k}": v for m, r in results.items() for k, v in r.items()
                                        if not k.endswith(("_ci_low", "_ci_high"))}))
    mlflow.set_tags({"test_eval_run_id": test_run, "best_baseline": best_baseline["name"] if best_baseline else ""})
    if best_baseline:
        b = best_baseline["comparison"] or {}
        mlflow.log_metrics(_finite_metrics({f"{TEST_DIFF_KEY}{s}": b.get(k)
                                            for s, k in (("", "mean_diff"), ("_low", "low"), ("_high", "high"),
                                                         ("_p_value", "p_value"))}))

    register_run = run_stage(project_uri, "register", {
        "run_id": trained[chosen], "data_dir": data_dir, "promote": promote, "n_resamples": n_resamples,
    }, "register")
    reg = client.get_run(register_run).data
    summary = {
        "models": results,
        "best_model": chosen,
        "chosen": choice,
        "best_baseline": best_baseline,
        "train_runs": trained,
        "val_eval_run_id": choice["eval_run_id"],
        "test_eval_run_id": test_run,
        "report": f"{client.get_run(test_run).info.artifact_uri}/evaluation/report.md",
        "register_run_id": register_run,
        "registered_version": reg.tags.get("registered_version"),
        "gate_decision": reg.tags.get("gate_decision"),
        "gate_reason": reg.tags.get("gate_reason"),
        "data_dir": str(data_dir),
        "data_warning": data_warning,
        "example_request": example_request(str(data_dir)),
        "seconds": time.perf_counter() - t_start,
    }
    mlflow.set_tags({
        "registered_version": summary["registered_version"] or "",
        "gate_decision": summary["gate_decision"] or "",
        "gate_reason": (summary["gate_reason"] or "")[:5000],
    })
    mlflow.log_dict(summary, "pipeline/summary.json")
    return summary


# -- the closing block ----------------------------------------------------------------------------


def _fmt_ci(fig: Mapping, key: str) -> str:
    value, low, high = fig.get(f"test_{key}"), fig.get(f"test_{key}_ci_low"), fig.get(f"test_{key}_ci_high")
    if value is None:
        return "n/a"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]" if low is not None and high is not None else f"{value:.4f}"


def _fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _report_location(uri: str) -> str:
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    if uri.startswith("/"):
        return uri
    return f"mlflow artifacts download -u {shlex.quote(uri)}"


def summary_text(summary: Mapping, *, ui_command: str, api_address: str = "localhost:8088",
                 run_location: str | None = None) -> str:
    """The block `main` prints last and sets as its run's description: the test figures, the choice
    on validation, the chosen model against the best baseline, the gate, and where to look next."""
    chosen = summary["best_model"]
    choice = summary.get("chosen") or {}
    baseline = summary.get("best_baseline")
    width = max(len(n) for n in [*summary["models"], *([baseline["name"]] if baseline else [])])
    lines = [f"PlayListAI pipeline done in {_fmt_seconds(summary['seconds'])} (data in {summary['data_dir']})",
             "test split, 95% intervals:"]
    for model, fig in summary["models"].items():
        mark = "  <- chosen" if model == chosen else ""
        lines.append(f"  {model:<{width}}  nDCG@10 {_fmt_ci(fig, NDCG)}  Recall@20 {_fmt_ci(fig, RECALL)}{mark}")
    if baseline:
        lines.append(f"  {baseline['name']:<{width}}  nDCG@10 {_fmt_ci(baseline, NDCG)}  "
                     f"Recall@20 {_fmt_ci(baseline, RECALL)}  (best baseline)")
    if choice.get("runner_up"):
        verb, verdict = _outcome(choice.get("comparison"))
        tie = " (a tie: the first of models is taken)" if choice.get("tie") else ""
        lines.append(f"chosen on validation: {chosen} {verb} {choice['runner_up']}: nDCG@10 "
                     f"{_fmt_diff(choice.get('comparison') or {})}, {verdict}{tie}")
    else:
        lines.append(f"chosen: {chosen}, the only model trained (nothing to compare on validation)")
    if baseline:
        verb, verdict = _outcome(baseline.get("comparison"))
        lines.append(f"on test: {chosen} {verb} the best baseline, {baseline['name']}: nDCG@10 "
                     f"{_fmt_diff(baseline.get('comparison') or {})}, {verdict}")
    else:
        lines.append("on test: no baseline evaluated (baselines=false)")
    lines.append(f"gate: {summary.get('gate_decision')} v{summary.get('registered_version')}: {summary.get('gate_reason')}")
    if summary.get("data_warning"):
        lines.append(f"warning: {summary['data_warning']}")
    lines.append(f"runs:    {ui_command}" + (f"  ({run_location})" if run_location else ""))
    lines.append(f"report:  {_report_location(summary['report'])}")
    request = summary.get("example_request")
    if request:
        body = json.dumps(request, separators=(", ", ": "))
        lines.append("try it:  make api, then")
        lines.append(f"  curl -s {api_address}/continue -H 'content-type: application/json' -d {shlex.quote(body)}")
    return "\n".join(lines)
