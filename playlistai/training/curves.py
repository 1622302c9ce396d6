"""The training-curve figure logged with every training run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt


def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train loss and validation metrics per epoch; the best epoch (by val_ndcg_at_10) is marked."""
    path = Path(path)
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train_loss")
    ax_loss.grid(alpha=0.3)
    for key in ("val_ndcg_at_10", "val_recall_at_20"):
        if history and key in history[0]:
            ax_val.plot(epochs, [r[key] for r in history], marker="o", label=key)
    if history:
        best = max(history, key=lambda r: r.get("val_ndcg_at_10", float("-inf")))
        ax_val.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1, label=f"best epoch {best['epoch']}")
    ax_val.set_xlabel("epoch")
    ax_val.legend()
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
