"""The evaluation report: one JSON, one Markdown table, three figures.

Rows are scorers (the model, each baseline, the oracle); the table shows the primary metrics with
their 95% session-bootstrap intervals, the other exclude_seen setting, and the share of the
oracle a scorer reached. Figures are built on `matplotlib.figure.Figure` directly (no pyplot
state), so building them from a worker or a test leaks nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from playlistai.evaluation import metrics as M
from playlistai.evaluation.evaluator import CURVE_MAX_K, ScorerEvaluation, setting_suffix

# the columns of the Markdown table: (metric key, header); `{other}` is the other setting's suffix
TABLE_COLUMNS: list[tuple[str, str]] = [
    ("recall_at_20", "Recall@20"),
    ("ndcg_at_10", "nDCG@10"),
    ("mrr_at_20", "MRR@20"),
    ("cont_recall_at_20", "ContRecall@20"),
    ("coverage_at_100", "Cov@100"),
    ("repetition_rate_at_20", "Rep@20"),
    ("artist_diversity_at_20", "ArtistDiv@20"),
    ("popularity_bias_at_20", "PopBias@20"),
    ("recall_at_20{other}", "Recall@20 {other_label}"),
    ("ndcg_at_10{other}", "nDCG@10 {other_label}"),
    ("repetition_rate_at_20{other}", "Rep@20 {other_label}"),
    ("recall_at_20_oracle_ratio", "Recall@20 / oracle"),
    ("ndcg_at_10_oracle_ratio", "nDCG@10 / oracle"),
]

# the seed's product goals, checked for every model row
SEED_GOALS: list[tuple[str, str, float]] = [
    ("recall_at_20", ">=", 0.45),
    ("ndcg_at_10", ">=", 0.30),
    ("coverage_at_100", ">=", 0.60),
    ("repetition_rate_at_20", "<=", 0.05),
    ("recall_at_20_oracle_ratio", ">=", 0.90),
    ("ndcg_at_10_oracle_ratio", ">=", 0.90),
]


def _finite(value: Any) -> Any:
    """JSON without NaN/inf (not valid JSON): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def report_to_json(report: dict) -> str:
    return json.dumps(_finite(report), indent=2, sort_keys=True)


def goal_checks(metrics: Mapping[str, float]) -> list[dict]:
    """Each seed goal for one row's metrics: value, threshold, met (None where the metric is missing)."""
    out = []
    for key, op, threshold in SEED_GOALS:
        value = metrics.get(key)
        met = None
        if value is not None and math.isfinite(value):
            met = value >= threshold if op == ">=" else value <= threshold
        out.append({"metric": key, "op": op, "threshold": threshold, "value": value, "met": met})
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def markdown_table(report: dict) -> str:
    """Model rows x metric columns; CIs in brackets for Recall@20 and nDCG@10."""
    other = report["other_setting_suffix"]
    other_label = "(repeats allowed)" if other == "_with_repeats" else "(seen excluded)"
    columns = [(key.format(other=other), head.format(other_label=other_label)) for key, head in TABLE_COLUMNS]
    lines = [
        f"Split `{report['split']}`: {report['num_cases']} next-track cases in {report['num_sessions']} sessions, "
        f"catalog {report['catalog_size']} tracks; seen tracks "
        f"{'excluded' if report['exclude_seen'] else 'allowed'} in the primary columns; "
        f"{100 * report['repeat_target_share']:.1f}% of targets were already in the input.",
        "",
        "| scorer | kind | " + " | ".join(head for _, head in columns) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for row in report["rows"]:
        cells = []
        for key, _ in columns:
            value = row["metrics"].get(key)
            ci = row.get("ci", {}).get(key)
            cell = _fmt(value)
            if ci is not None and ci.get("low") is not None:
                cell += f" [{_fmt(ci['low'])}, {_fmt(ci['high'])}]"
            cells.append(cell)
        lines.append(f"| {row['name']} | {row['kind']} | " + " | ".join(cells) + " |")
    if report.get("comparisons"):
        lines += ["", "Paired bootstrap over sessions (A − B on the same cases, 95% interval):", ""]
        lines += ["| A | B | metric | mean diff | interval | p-value | A better? |", "|---|---|---|---|---|---|---|"]
        for c in report["comparisons"]:
            better = "yes" if c["significant"] and c["mean_diff"] > 0 else ("no (worse)" if c["significant"] else "not separable")
            lines.append(
                f"| {c['a']} | {c['b']} | {c['metric']} | {_fmt(c['mean_diff'], 4)} | "
                f"[{_fmt(c['low'], 4)}, {_fmt(c['high'], 4)}] | {_fmt(c['p_value'], 4)} | {better} |"
            )
    ablations = [r for r in report["rows"] if r.get("context")]
    if ablations:
        lines += ["", "Context ablation (true context − shuffled context, paired bootstrap):", ""]
        lines += ["| scorer | metric | true | shuffled | lift | interval | p-value |", "|---|---|---|---|---|---|---|"]
        for r in ablations:
            for metric, c in r["context"].items():
                lines.append(
                    f"| {r['name']} | {metric} | {_fmt(c['true'])} | {_fmt(c['shuffled'])} | {_fmt(c['lift'], 4)} | "
                    f"[{_fmt(c['low'], 4)}, {_fmt(c['high'], 4)}] | {_fmt(c['p_value'], 4)} |"
                )
    goal_rows = [r for r in report["rows"] if r["kind"] == "model"]
    if goal_rows:
        lines += ["", "Seed goals (primary setting):", ""]
        for r in goal_rows:
            checks = ", ".join(
                f"{g['metric']} {g['op']} {g['threshold']}: {_fmt(g['value'])} "
                f"({'met' if g['met'] else 'missed' if g['met'] is False else 'n/a'})"
                for g in r.get("goals", [])
            )
            lines.append(f"- {r['name']}: {checks}")
    return "\n".join(lines) + "\n"


# -- figures --------------------------------------------------------------------------------------

LENGTH_BINS: list[tuple[int, int]] = [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, 10**9)]


def _bin_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")


def curves_figure(evaluations: Sequence[ScorerEvaluation], max_k: int = CURVE_MAX_K) -> Figure:
    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    ax_r, ax_n = fig.subplots(1, 2)
    ks = np.arange(1, max_k + 1)
    for ev in evaluations:
        ranks = ev.rankings[ev.primary_exclude_seen].ranks
        style = "--" if ev.name == "oracle" else "-"
        ax_r.plot(ks, M.recall_curve(ranks, max_k), style, label=ev.name)
        ax_n.plot(ks, M.ndcg_curve(ranks, max_k), style, label=ev.name)
    for ax, title in ((ax_r, "Recall@k"), (ax_n, "nDCG@k")):
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_n.legend(fontsize=8, loc="lower right")
    return fig


def ndcg_by_length(ranks: np.ndarray, history_lengths: np.ndarray, k: int = 10) -> list[tuple[str, float, int]]:
    """(bin label, mean nDCG@k, cases) per history-length bin."""
    per_case = M.ndcg_per_case(ranks, k)
    out = []
    for lo, hi in LENGTH_BINS:
        mask = (history_lengths >= lo) & (history_lengths <= hi)
        if mask.any():
            out.append((_bin_label(lo, hi), float(per_case[mask].mean()), int(mask.sum())))
    return out


def length_figure(evaluations: Sequence[ScorerEvaluation], history_lengths: np.ndarray) -> Figure:
    fig = Figure(figsize=(7, 4.2), constrained_layout=True)
    ax = fig.subplots()
    labels: list[str] = []
    for ev in evaluations:
        rows = ndcg_by_length(ev.rankings[ev.primary_exclude_seen].ranks, history_lengths)
        labels = [r[0] for r in rows]
        ax.plot(range(len(rows)), [r[1] for r in rows], "--o" if ev.name == "oracle" else "-o", label=ev.name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("known tracks before the target")
    ax.set_ylabel("nDCG@10")
    ax.set_title("nDCG@10 by history length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def popularity_figure(
    evaluations: Sequence[ScorerEvaluation], targets: np.ndarray, popularity_percentile: np.ndarray, k: int = 20
) -> Figure:
    """Training-popularity percentile of recommended tracks against the held-out targets, as
    cumulative shares: a curve below the targets' recommends more popular tracks than are played."""
    fig = Figure(figsize=(7, 4.2), constrained_layout=True)
    ax = fig.subplots()

    grid = np.linspace(0.0, 1.0, 201)

    def ecdf(values: np.ndarray, **style) -> None:
        # on a fixed grid: hundreds of thousands of slate entries would make a heavy figure
        values = np.sort(values)
        if len(values):
            ax.step(grid, np.searchsorted(values, grid, side="right") / len(values), where="post", **style)

    ecdf(popularity_percentile[targets], color="black", linewidth=2.5, alpha=0.5, label="held-out targets")
    for ev in evaluations:
        slates = ev.rankings[ev.primary_exclude_seen].slates[:, :k]
        ecdf(popularity_percentile[slates[slates != M.PAD]], linestyle="--" if ev.name == "oracle" else "-",
             label=f"{ev.name} top-{k}")
    ax.set_xlabel("training popularity percentile of the track")
    ax.set_ylabel("cumulative share")
    ax.set_title("Popularity of recommended vs held-out tracks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def build_figures(
    evaluations: Sequence[ScorerEvaluation], history_lengths: np.ndarray, targets: np.ndarray,
    popularity_percentile: np.ndarray,
) -> dict[str, Figure]:
    """Artifact path -> figure."""
    return {
        "plots/recall_ndcg_at_k.png": curves_figure(evaluations),
        "plots/ndcg_by_history_length.png": length_figure(evaluations, history_lengths),
        "plots/popularity_recommended_vs_heldout.png": popularity_figure(evaluations, targets, popularity_percentile),
    }


def other_suffix(exclude_seen: bool) -> str:
    return setting_suffix(not exclude_seen, exclude_seen)
