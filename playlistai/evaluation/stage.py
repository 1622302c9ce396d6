"""The `evaluate` stage: a model (optional), the baselines and the oracle on one split, one report.

`compute_evaluation` scores them and returns an `EvaluationReport`, without touching MLflow;
`log_report` logs it into the active run (the entry point opens it with `stage_run`): one nested
child run per scorer with the same split-prefixed keys (`test_recall_at_20`, ...), so the MLflow
UI compares model, baselines and oracle side by side; the parent run gets the model's keys, the
oracle's (`oracle/test_*`), the paired comparisons (`compare/test_*`), the report (JSON,
Markdown) and the figures. Only the headline keys are flat, every other key is in a group
(`ci/`, `context/`, ...: evaluation/keys.py says which).

Leakage guard: evaluating on the training split is refused unless `allow_train_split` says so,
because every number it gives is inflated by memorisation and would be mistaken for quality.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np

from playlistai.data.layout import SPLITS, DataLayout
from playlistai.data.sequences import (
    NextTrackCases,
    encode_sessions,
    load_split,
    load_vocab,
    next_track_cases,
)
from playlistai.data.vocab import Vocabulary
from playlistai.evaluation import keys as K
from playlistai.evaluation import report as R
from playlistai.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_ci, paired_bootstrap
from playlistai.evaluation.evaluator import (
    DESIGN_NDCG_K,
    DESIGN_RECALL_K,
    ScorerEvaluation,
    continuation_cases,
    evaluate_scorer,
    per_case_metrics,
    rank_next_track,
    shuffle_context,
)
from playlistai.evaluation.oracle import load_world, oracle_for_cases
from playlistai.model_ref import ModelRef
from playlistai.params import StageParams, param

ORACLE = "oracle"
ScorerKind = Literal["model", "baseline", "oracle"]
# the metrics with bootstrap intervals and paired comparisons: the list's coverage, its top, and
# how soon the first hit comes (MRR is what session-recommendation papers report beside P@20).
# In MLflow these, coverage@100 and repetition@20 are the flat headline keys (keys.HEADLINE:
# `test_ndcg_at_10`); every other key is in a group (`ci/test_ndcg_at_10_low`)
PRIMARY = (f"recall_at_{DESIGN_RECALL_K}", f"ndcg_at_{DESIGN_NDCG_K}", f"mrr_at_{DESIGN_RECALL_K}")
# metrics whose ratio to the oracle means something (accuracy; not coverage or diversity)
_RATIO_PREFIXES = ("recall_at_", "ndcg_at_", "mrr_at_", "cont_recall_at_")


class LeakageError(ValueError):
    """Evaluation on the training split was asked for without allowing it."""


def check_split(split: str, allow_train_split: bool) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "train" and not allow_train_split:
        raise LeakageError(
            "refusing to evaluate on the training split: models and baselines were fitted on it, so its "
            "numbers measure memorisation; pass allow_train_split=true if that is what you want"
        )


def parse_ks(ks: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(ks, str):
        try:
            values = [int(float(x)) for x in ks.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"ks: expected comma-separated integers such as '10,20', got {ks!r}") from None
    else:
        values = [int(k) for k in ks]
    if not values or any(k < 1 for k in values):
        raise ValueError(f"ks: expected positive integers, got {ks!r}")
    return tuple(sorted(set(values)))


def parse_baselines(value: str | bool | Sequence[str]) -> list[str]:
    """true/false, or a comma-separated list of baseline names."""
    from playlistai.models.baselines import BASELINES

    if isinstance(value, bool):
        return list(BASELINES) if value else []
    if not isinstance(value, str):
        names = list(value)
    else:
        v = value.strip().lower()
        if v in ("true", "1", "yes", "all"):
            return list(BASELINES)
        if v in ("false", "0", "no", "none", ""):
            return []
        names = [n.strip() for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; expected true, false or some of {', '.join(BASELINES)}")
    return names


# -- the model under evaluation -------------------------------------------------------------------


def load_model(model_uri: str, download_dir: Path):
    """(model, vocab, config) from a checkpoint directory, `runs:/<id>/checkpoint` or `models:/...`."""
    from playlistai.models.checkpoint import find_checkpoint_dir, load_checkpoint

    ref = ModelRef.parse(model_uri)
    if ref.is_local:
        local = Path(ref.uri)
        if not local.exists():
            raise FileNotFoundError(f"model_uri {model_uri!r}: no such checkpoint directory")
        return load_checkpoint(find_checkpoint_dir(local))
    try:
        path = ref.fetch(download_dir)
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"model_uri {model_uri!r} could not be downloaded: {exc.message}") from None
    return load_checkpoint(find_checkpoint_dir(path))


def model_row_name(model_config: Mapping, taken: set[str]) -> str:
    """`sasrec`, `gru4rec`, `sasrec_noctx` (trained without context); `_2`, `_3` when repeated."""
    name = str(model_config.get("family", "model"))
    if model_config.get("use_context") is False:
        name += "_noctx"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def check_same_vocabulary(model_vocab: Vocabulary, data_vocab: Vocabulary) -> None:
    if model_vocab.track_ids != data_vocab.track_ids:
        raise ValueError(
            f"the model's vocabulary ({len(model_vocab)} tracks) differs from data_dir's ({len(data_vocab)}): "
            "evaluate a model on the splits it was trained with"
        )


# -- metrics of one scorer ------------------------------------------------------------------------


def with_oracle_ratios(metrics: Mapping[str, float], oracle: Mapping[str, float]) -> dict[str, float]:
    out = dict(metrics)
    for key, value in metrics.items():
        if key.startswith(_RATIO_PREFIXES) and key in oracle:
            denom = oracle[key]
            out[f"{key}_oracle_ratio"] = float(value / denom) if denom and np.isfinite(denom) else float("nan")
    return out


def context_ablation(
    scorer, cases, evaluation: ScorerEvaluation, ks, n_resamples: int, seed: int, batch_size: int
) -> dict[str, dict]:
    """The scorer with each case's (hour, dow) replaced by another case's: lift = true - shuffled."""
    setting = evaluation.primary_exclude_seen
    shuffled = rank_next_track(
        scorer, shuffle_context(cases, seed), exclude_seen_settings=(setting,), batch_size=batch_size,
        progress=f"{evaluation.name}, context shuffled",
    )[setting]
    shuffled_per_case = per_case_metrics(shuffled.ranks, ks)
    out = {}
    for metric in PRIMARY:
        true_values = evaluation.per_case[setting][metric]
        cmp = paired_bootstrap(true_values, shuffled_per_case[metric], cases.session_index, n_resamples, seed=seed)
        out[metric] = {
            "true": float(true_values.mean()),
            "shuffled": float(shuffled_per_case[metric].mean()),
            "lift": cmp.mean_diff,
            "low": cmp.low,
            "high": cmp.high,
            "p_value": cmp.p_value,
        }
    return out


# -- what the evaluation returns ------------------------------------------------------------------


@dataclass(kw_only=True)
class ScorerRow:
    """One scorer's line of the report; `as_dict` is its form in report.json."""

    name: str
    kind: ScorerKind
    metrics: dict[str, float]                   # unprefixed; with `*_oracle_ratio` when the oracle ran
    ci: dict[str, dict]                         # PRIMARY metric -> bootstrap interval
    seconds: float
    cases_per_second: float
    # whether the (hour, dow) context can move the scores: every model (for a context-free one the
    # ablation is the check that it ignores it) and a baseline that reads it (Baseline.uses_context);
    # for any other scorer shuffling the context changes nothing, so it is not measured
    ablate_context: bool = False
    context: dict[str, dict] | None = None      # the context ablation: true, shuffled, lift...
    oracle: dict[str, float] | None = None      # the oracle's accuracy keys
    goals: list[dict] | None = None             # model rows: the seed goals
    beats_every_baseline: dict[str, bool | None] | None = None   # model rows

    def as_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "metrics": self.metrics, "ci": self.ci,
               "seconds": self.seconds, "cases_per_second": self.cases_per_second}
        for key in ("context", "oracle", "goals", "beats_every_baseline"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(kw_only=True)
class EvaluationReport:
    """What `compute_evaluation` found. `as_dict` is report.json (and report.md's input); the fields
    after `seconds` are what `log_report` needs besides: per-case values and the figures' inputs."""

    split: str
    exclude_seen: bool
    ks: tuple[int, ...]
    max_seq_len: int
    num_cases: int
    num_sessions: int
    num_continuation_cases: int
    catalog_size: int
    repeat_target_share: float
    unknown_event_share: float
    n_resamples: int
    models: dict[str, dict]                     # row name -> model_uri, max_seq_len (checkpoints only)
    rows: list[ScorerRow]
    comparisons: list[dict]                     # paired bootstrap: model vs each baseline and other model
    seconds: float
    evaluations: dict[str, ScorerEvaluation] = field(repr=False)
    cases: NextTrackCases = field(repr=False)
    session_ids: np.ndarray = field(repr=False)     # of the split's sessions, by EncodedSessions row
    vocab: Vocabulary = field(repr=False)

    def rows_of(self, kind: ScorerKind) -> list[ScorerRow]:
        return [row for row in self.rows if row.kind == kind]

    def as_dict(self) -> dict:
        return {
            "split": self.split,
            "exclude_seen": self.exclude_seen,
            "other_setting_suffix": R.other_suffix(self.exclude_seen),
            "ks": list(self.ks),
            "max_seq_len": self.max_seq_len,
            "num_cases": self.num_cases,
            "num_sessions": self.num_sessions,
            "num_continuation_cases": self.num_continuation_cases,
            "catalog_size": self.catalog_size,
            "repeat_target_share": self.repeat_target_share,
            "unknown_event_share": self.unknown_event_share,
            "n_resamples": self.n_resamples,
            "models": self.models,
            "rows": [row.as_dict() for row in self.rows],
            "comparisons": self.comparisons,
            "seconds": self.seconds,
        }


def row_metric_keys(row: ScorerRow, split: str) -> dict[str, float]:
    """Every MLflow metric of one scorer's child run, split-prefixed: the HEADLINE metrics flat,
    the others grouped (evaluation/keys.py)."""
    keys = {K.metric_key(split, k): v for k, v in row.metrics.items()}
    for metric, ci in row.ci.items():
        keys[K.ci_key(split, metric, "low")] = ci["low"]
        keys[K.ci_key(split, metric, "high")] = ci["high"]
    for metric, c in (row.context or {}).items():
        keys[K.context_key(split, metric, "lift")] = c["lift"]
        keys[K.context_key(split, metric, "shuffled")] = c["shuffled"]
        keys[K.context_key(split, metric, "lift_p_value")] = c["p_value"]
    for key, value in (row.oracle or {}).items():
        keys[K.oracle_key(split, key)] = value
    keys[K.metric_key(split, "eval_seconds")] = row.seconds
    return {k: float(v) for k, v in keys.items() if v is not None}


# -- the stage ------------------------------------------------------------------------------------


@dataclass
class EvaluateParams(StageParams):
    """The `evaluate` entry point's params (MLproject); `ks` and `baselines` as written, for parse_ks and
    parse_baselines."""

    model_uri: str = param("", "checkpoint dir, runs:/<id>/checkpoint or models:/... (comma-separated for "
                           "several); empty = baselines only")
    split: str = param("test", "val | test (train only with --allow-train-split true)")
    ks: str = param("10,20", "cut-offs, comma-separated (10 and 20 are always reported)")
    exclude_seen: bool = param(True, "exclude tracks of the input from the ranking")
    baselines: str = param("true", "true | false | comma-separated names")
    data_dir: str = param("data", "defaults to DATA_DIR", setting="DATA_DIR")
    allow_train_split: bool = param(False, "allow evaluating on the training split")
    max_seq_len: int = param(0, "0 = the model's, else the splits stage's", minimum=0)
    n_resamples: int = param(DEFAULT_RESAMPLES, "bootstrap resamples", minimum=10)
    seed: int = param(0, minimum=0)
    batch_size: int = param(512, minimum=1)


@dataclass(frozen=True)
class ScorerEntry:
    """A scorer to evaluate, as the report will name it."""

    name: str
    kind: ScorerKind
    scorer: object
    continuation_scorer: object | None = None   # the oracle's, tied to the continuation cases
    ablate_context: bool = False                # see ScorerRow


def load_models(model_uri: str, vocab: Vocabulary) -> tuple[dict[str, object], dict[str, dict]]:
    """The checkpoints `model_uri` names (comma-separated) by row name, and what the report says of each."""
    models: dict[str, object] = {}
    meta: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="playlistai-eval-") as tmp:
        for i, uri in enumerate(u.strip() for u in model_uri.split(",") if u.strip()):
            model, model_vocab, config = load_model(uri, Path(tmp) / str(i))
            check_same_vocabulary(model_vocab, vocab)
            name = model_row_name(config.get("model_config", {}), taken=set(models))
            models[name] = model
            meta[name] = {"model_uri": uri, "max_seq_len": config["model_config"].get("max_seq_len")}
    return models, meta


def default_max_seq_len(layout: DataLayout, model_meta: Mapping[str, dict]) -> int:
    """The first model's input length, else the splits stage's, else 50."""
    lengths = [m["max_seq_len"] for m in model_meta.values() if m.get("max_seq_len")]
    meta = json.loads(layout.splits_meta.read_text()) if layout.splits_meta.exists() else {}
    return int(lengths[0] if lengths else meta.get("max_seq_len", 50))


def score_row(
    entry: ScorerEntry, cases: NextTrackCases, vocab: Vocabulary, continuation, ks: Sequence[int],
    params: EvaluateParams,
) -> tuple[ScorerEvaluation, ScorerRow]:
    """One scorer's evaluation and its row, with intervals and (where it applies) the context ablation."""
    t0 = time.perf_counter()
    ev = evaluate_scorer(
        entry.name, entry.scorer, cases, vocab, continuation, ks=ks, exclude_seen=params.exclude_seen,
        batch_size=params.batch_size, continuation_scorer=entry.continuation_scorer, progress=True,
    )
    seconds = time.perf_counter() - t0
    setting = ev.primary_exclude_seen
    row = ScorerRow(
        name=entry.name,
        kind=entry.kind,
        metrics=dict(ev.metrics),
        ci={m: bootstrap_ci(ev.per_case[setting][m], cases.session_index, params.n_resamples,
                            seed=params.seed).as_dict()
            for m in PRIMARY},
        seconds=seconds,
        cases_per_second=len(cases) / seconds if seconds > 0 else float("nan"),
        ablate_context=entry.ablate_context,
    )
    if row.ablate_context:
        row.context = context_ablation(entry.scorer, cases, ev, ks, params.n_resamples, params.seed, params.batch_size)
    return ev, row


def paired_comparisons(
    model_names: Sequence[str], rows: Sequence[ScorerRow], evaluations: Mapping[str, ScorerEvaluation],
    cases: NextTrackCases, params: EvaluateParams,
) -> list[dict]:
    """Each model against each baseline and each other model, on the same cases."""
    setting = params.exclude_seen
    comparisons = []
    for model_name in model_names:
        a = evaluations[model_name]
        for row in rows:
            if not (row.kind == "baseline" or (row.kind == "model" and row.name != model_name)):
                continue
            b = evaluations[row.name]
            for metric in PRIMARY:
                cmp = paired_bootstrap(
                    a.per_case[setting][metric], b.per_case[setting][metric], cases.session_index,
                    params.n_resamples, seed=params.seed,
                )
                comparisons.append({"a": model_name, "b": row.name, "metric": metric, **cmp.as_dict()})
    return comparisons


def beats_every_baseline(model: str, comparisons: Sequence[Mapping], baselines: set[str]) -> dict[str, bool | None]:
    """Per primary metric: whether `model` beats each baseline outside the paired interval; None
    without baselines. The other models it was compared with are not baselines."""
    against = [c for c in comparisons if c["a"] == model and c["b"] in baselines]
    return {m: all(c["significant"] and c["mean_diff"] > 0 for c in against if c["metric"] == m) if against else None
            for m in PRIMARY}


def compute_evaluation(
    params: EvaluateParams, *, oracle: bool = True, extra_scorers: Mapping[str, object] | None = None
) -> EvaluationReport:
    """Evaluate the models of `params.model_uri`, the baselines and the oracle; log nothing.

    `model_uri` names one checkpoint, or several separated by commas (SASRec, GRU4Rec, a
    context-free variant: compared pairwise in one report); `extra_scorers` adds in-memory scorers
    as model rows (tests, notebooks). Either may be empty: baselines and the oracle alone are a
    valid report.
    """
    check_split(params.split, params.allow_train_split)
    ks = parse_ks(params.ks)
    baseline_names = parse_baselines(params.baselines)
    if params.n_resamples < 10:
        raise ValueError("n_resamples must be >= 10")
    t_start = time.perf_counter()
    data_dir = params.data_dir
    layout = DataLayout.of(data_dir)
    vocab = load_vocab(data_dir)

    models, model_meta = load_models(params.model_uri, vocab)
    for name, scorer in (extra_scorers or {}).items():
        if name in models or name in baseline_names or name == ORACLE:
            raise ValueError(f"scorer name {name!r} is taken")
        models[name] = scorer
    max_seq_len = params.max_seq_len or default_max_seq_len(layout, model_meta)

    frame = load_split(data_dir, params.split)
    sessions = encode_sessions(frame, vocab)
    cases = next_track_cases(sessions, max_seq_len)
    continuation = continuation_cases(sessions, max_seq_len)
    if len(cases) == 0:
        raise ValueError(f"split {params.split!r} has no next-track case with a known history and target")

    scorers = [ScorerEntry(n, "model", s, ablate_context=True) for n, s in models.items()]
    if baseline_names:
        from playlistai.models.baselines import fit_baselines

        train = encode_sessions(load_split(data_dir, "train"), vocab)
        for name, scorer in fit_baselines(train, vocab.size, baseline_names).items():
            scorers.append(ScorerEntry(name, "baseline", scorer, ablate_context=scorer.uses_context))
    world = load_world(data_dir) if oracle else None
    if world is not None:
        next_oracle = oracle_for_cases(world, frame, sessions, cases, vocab)
        cont_oracle = oracle_for_cases(world, frame, sessions, continuation, vocab)
        scorers.append(ScorerEntry(ORACLE, "oracle", next_oracle, continuation_scorer=cont_oracle))
    if not scorers:
        raise ValueError("nothing to evaluate: give model_uri or enable baselines")

    evaluations: dict[str, ScorerEvaluation] = {}
    rows: list[ScorerRow] = []
    for entry in scorers:
        evaluations[entry.name], row = score_row(entry, cases, vocab, continuation, ks, params)
        rows.append(row)

    if ORACLE in evaluations:
        oracle_metrics = evaluations[ORACLE].metrics
        oracle_keys = {k: v for k, v in oracle_metrics.items() if k.startswith(_RATIO_PREFIXES)}
        for row in rows:
            row.oracle = oracle_keys
            if row.kind != "oracle":
                row.metrics = with_oracle_ratios(row.metrics, oracle_metrics)

    comparisons = paired_comparisons(list(models), rows, evaluations, cases, params)
    baselines = {row.name for row in rows if row.kind == "baseline"}
    for row in rows:
        if row.kind == "model":
            row.goals = R.goal_checks(row.metrics)
            row.beats_every_baseline = beats_every_baseline(row.name, comparisons, baselines)

    first = next(iter(evaluations.values()))
    return EvaluationReport(
        split=params.split,
        exclude_seen=params.exclude_seen,
        ks=ks,
        max_seq_len=max_seq_len,
        num_cases=len(cases),
        num_sessions=int(first.metrics["num_sessions"]),
        num_continuation_cases=len(continuation),
        catalog_size=len(vocab),
        repeat_target_share=first.metrics["repeat_target_share"],
        unknown_event_share=sessions.unknown_share,
        n_resamples=params.n_resamples,
        models=model_meta,
        rows=rows,
        comparisons=comparisons,
        seconds=time.perf_counter() - t_start,
        evaluations=evaluations,
        cases=cases,
        session_ids=sessions.session_ids,
        vocab=vocab,
    )


def log_report(report: EvaluationReport) -> None:
    """Into the active run: a child run per scorer, then the parent's summary keys and artifacts."""
    split = report.split
    cases = report.cases
    common_params = {
        "split": split, "exclude_seen": report.exclude_seen, "ks": ",".join(map(str, report.ks)),
        "max_seq_len": report.max_seq_len, "n_resamples": report.n_resamples,
    }
    for row in report.rows:
        with mlflow.start_run(run_name=f"{split}:{row.name}", nested=True):
            mlflow.set_tags({"stage": "evaluate", "scorer": row.name, "scorer_kind": row.kind})
            mlflow.log_params({**common_params, "scorer": row.name})
            mlflow.log_metrics(row_metric_keys(row, split))
            ev = report.evaluations[row.name]
            with tempfile.TemporaryDirectory() as tmp:
                # per-case values and their sessions: what a later paired comparison needs
                path = Path(tmp) / "per_case.npz"
                np.savez_compressed(
                    path,
                    session_id=report.session_ids[cases.session_index],
                    position=cases.positions,
                    **{f"{m}{R.setting_suffix(s, ev.primary_exclude_seen)}": ev.per_case[s][m]
                       for s in ev.per_case for m in PRIMARY},
                )
                mlflow.log_artifact(str(path), artifact_path="evaluation")
    parent_keys: dict[str, float] = {
        K.metric_key(split, "num_cases"): report.num_cases,
        K.metric_key(split, "repeat_target_share"): report.repeat_target_share,
        K.metric_key(split, "eval_seconds"): report.seconds,
    }
    model_rows = report.rows_of("model")
    if len(model_rows) == 1:
        # the parent run of a model evaluation carries that model's keys, for the promotion gate
        parent_keys.update(row_metric_keys(model_rows[0], split))
    oracle_rows = report.rows_of("oracle")
    if oracle_rows:
        parent_keys.update({K.oracle_key(split, k): v for k, v in oracle_rows[0].metrics.items()
                            if k.startswith(_RATIO_PREFIXES)})
    for c in report.comparisons:
        key = K.compare_key(split, c["metric"], c["a"], c["b"])
        parent_keys[key] = c["mean_diff"]
        parent_keys[f"{key}_p_value"] = c["p_value"]
    mlflow.log_metrics({k: float(v) for k, v in parent_keys.items() if v is not None})
    as_dict = report.as_dict()
    mlflow.log_text(R.report_to_json(as_dict), "evaluation/report.json")
    mlflow.log_text(R.markdown_table(as_dict), "evaluation/report.md")
    figures = R.build_figures(
        list(report.evaluations.values()), cases.history_lengths, cases.targets, report.vocab.popularity_percentile()
    )
    for path, fig in figures.items():
        mlflow.log_figure(fig, f"evaluation/{path}")
