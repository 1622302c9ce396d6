"""Paired comparison of two evaluation runs from their logged per-case values.

Each scorer's child run of `evaluate` logs `evaluation/per_case.npz`: the per-case values of
Recall@20 and nDCG@10 (both exclude_seen settings) with each case's `session_id` and `position`.
Two runs on the same split share cases; aligning on (session_id, position) keeps the comparison
paired even if one run dropped cases (a different vocabulary, say), and refuses when too few
cases are shared for the comparison to mean anything.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from playlistai.evaluation.bootstrap import PairedComparison, paired_bootstrap

PER_CASE_ARTIFACT = "evaluation/per_case.npz"


def load_per_case(run_id: str) -> dict[str, np.ndarray]:
    """The per-case arrays an evaluate child run logged."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PER_CASE_ARTIFACT)
    with np.load(Path(path)) as data:
        return {k: data[k] for k in data.files}


def compare_per_case(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    metric: str = "ndcg_at_10",
    min_shared: float = 0.9,
    **bootstrap_kwargs,
) -> PairedComparison:
    """A minus B on the cases both evaluated (matched by session id and position)."""
    for name, side in (("A", a), ("B", b)):
        if metric not in side:
            raise ValueError(f"{name} has no per-case {metric!r}; it has {sorted(side)}")
    key = lambda d: d["session_id"].astype(np.int64) * (1 << 20) + d["position"].astype(np.int64)  # noqa: E731
    shared, ia, ib = np.intersect1d(key(a), key(b), assume_unique=True, return_indices=True)
    if len(shared) < min_shared * max(len(a[metric]), len(b[metric])):
        raise ValueError(
            f"only {len(shared)} cases are shared by A ({len(a[metric])}) and B ({len(b[metric])}): "
            "were they evaluated on the same split?"
        )
    return paired_bootstrap(a[metric][ia], b[metric][ib], a["session_id"][ia], **bootstrap_kwargs)
