"""Small figures of a dataset, logged to MLflow where people would rather look than read."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def dataset_figure(track_counts: np.ndarray, session_lengths: np.ndarray | None, title: str):
    """Track popularity (rank vs plays, log-log) beside the session-length histogram."""
    n = 2 if session_lengths is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4))
    axes = np.atleast_1d(axes)
    counts = np.sort(np.asarray(track_counts))[::-1]
    axes[0].loglog(np.arange(1, len(counts) + 1), np.maximum(counts, 1))
    axes[0].set(xlabel="track rank", ylabel="plays", title="track popularity")
    axes[0].grid(True, which="both", alpha=0.3)
    if session_lengths is not None:
        lengths = np.asarray(session_lengths)
        hi = int(np.percentile(lengths, 99)) + 1 if len(lengths) else 1
        axes[1].hist(np.minimum(lengths, hi), bins=min(hi, 60), color="tab:orange")
        axes[1].set(xlabel="plays per session (99th pct. capped)", ylabel="sessions", title="session length")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
