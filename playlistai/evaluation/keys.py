"""The MLflow metric keys of an evaluation: a few headline keys flat, every other key in a group.

MLflow 3's UI puts keys without a "/" in a run's first chart section ("Model metrics") and gives
each prefix before a "/" a section of its own (as the pipeline's `stage_seconds/<stage>`). So only
the figures a reader looks for first are flat; the rest sit under a group, out of their way (the
compare-runs table sorts keys plainly, so there the groups before "t" come first):

- headline, flat: `{split}_<m>` for each `m` of HEADLINE (`test_recall_at_20`, `test_ndcg_at_10`,
  `test_mrr_at_20`, `test_coverage_at_100`, `test_repetition_rate_at_20`);
- `ci/{split}_<m>_low`, `_high`: 95% session-bootstrap interval of each primary metric;
- `context/{split}_<m>_lift`, `_lift_p_value`, `_shuffled`: the context ablation;
- `oracle/{split}_<m>`: the oracle's figure; `oracle/{split}_<m>_ratio`: the scorer's share of it;
- `compare/{split}_<m>_diff_<a>_vs_<b>`, `_p_value`: paired differences between scorers (the
  evaluation's parent run; the pipeline's `chosen_vs_runner_up` and `chosen_vs_best_baseline`);
- `with_repeats/{split}_<m>` (or `seen_excluded/` when repeats are the run's setting): every
  metric under the other exclude_seen setting;
- `more/{split}_<m>`: the other cut-offs and slate metrics (`recall_at_10`, `cont_recall_at_20`,
  `artist_diversity_at_20`, `popularity_bias_at_20`, ...);
- `info/{split}_<name>`: what was evaluated and how long it took (`num_cases`, `num_sessions`,
  `repeat_target_share`, `eval_seconds`).

Only MLflow keys are grouped: report.json, report.md and per_case.npz keep the unprefixed metric
names (`recall_at_20`, `recall_at_20_with_repeats`, `recall_at_20_oracle_ratio`).

No heavy import here: the pipeline reads its group names from this module.
"""

from __future__ import annotations

# the metrics logged flat, under `{split}_<name>`: the primary metrics (evaluation.stage.PRIMARY),
# the share of the catalog the lists reach and how often they repeat
HEADLINE = ("recall_at_20", "ndcg_at_10", "mrr_at_20", "coverage_at_100", "repetition_rate_at_20")

CI, CONTEXT, ORACLE, COMPARE, MORE, INFO = "ci", "context", "oracle", "compare", "more", "info"
# the suffixes of the other exclude_seen setting's metrics (evaluator.setting_suffix); each is its group
WITH_REPEATS, SEEN_EXCLUDED = "_with_repeats", "_seen_excluded"
SETTING_SUFFIXES = (WITH_REPEATS, SEEN_EXCLUDED)
ORACLE_RATIO_SUFFIX = "_oracle_ratio"
# a run's bookkeeping rather than a quality figure
INFO_NAMES = ("num_cases", "num_sessions", "repeat_target_share", "eval_seconds")


def headline_keys(split: str) -> tuple[str, ...]:
    return tuple(f"{split}_{name}" for name in HEADLINE)


def grouped(group: str, split: str, name: str) -> str:
    return f"{group}/{split}_{name}"


def metric_key(split: str, name: str) -> str:
    """The MLflow key of a scorer's metric by its report name (ScorerRow.metrics: `ndcg_at_10`,
    `recall_at_10`, `ndcg_at_10_with_repeats`, `ndcg_at_10_oracle_ratio`, `num_cases`, ...)."""
    if name in HEADLINE:
        return f"{split}_{name}"
    if name.endswith(ORACLE_RATIO_SUFFIX):
        return grouped(ORACLE, split, name.removesuffix(ORACLE_RATIO_SUFFIX) + "_ratio")
    for suffix in SETTING_SUFFIXES:
        if name.endswith(suffix):
            return grouped(suffix.removeprefix("_"), split, name.removesuffix(suffix))
    return grouped(INFO if name in INFO_NAMES else MORE, split, name)


def ci_key(split: str, metric: str, bound: str) -> str:
    """`bound`: low or high."""
    return grouped(CI, split, f"{metric}_{bound}")


def context_key(split: str, metric: str, what: str) -> str:
    """`what`: lift, lift_p_value or shuffled."""
    return grouped(CONTEXT, split, f"{metric}_{what}")


def oracle_key(split: str, metric: str) -> str:
    """The oracle's own figure of `metric` (the oracle's row name, `recall_at_20`, ...)."""
    return grouped(ORACLE, split, metric)


def compare_key(split: str, metric: str, a: str, b: str) -> str:
    """The paired difference `a` minus `b` on `metric`; `+ "_p_value"` is its p-value."""
    return grouped(COMPARE, split, f"{metric}_diff_{a}_vs_{b}")
