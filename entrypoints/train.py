"""Entry point `train`: split files -> a trained SASRec or GRU4Rec, tracked in MLflow.

    python -m entrypoints.train --model sasrec --data-dir data [--trainer local] ...

Params arrive as strings (MLproject passes "3.0" for a float param) and are logged exactly as
received; bad values fail before any training with one line on stderr and exit status 2.
"""

from __future__ import annotations

import typer

from entrypoints.common import after_training, as_bool, as_int, cli_errors, echo_next, require_splits
from playlistai.config import get_settings
from playlistai.tracking import run_location
from playlistai.training.stage import TrainParams, run_train_stage

app = typer.Typer(add_completion=False)


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


@app.command()
def main(
    model: str = typer.Option(None, help="sasrec | gru4rec (transformer = sasrec); defaults to MODEL_NAME"),
    d_model: str = typer.Option(None, help="defaults to MODEL_D"),
    n_layers: str = typer.Option("2"),
    n_heads: str = typer.Option("2", help="SASRec attention heads; must divide d_model"),
    dropout: str = typer.Option("0.2"),
    max_seq_len: str = typer.Option(None, help="defaults to MAX_SEQ_LEN"),
    epochs: str = typer.Option("200", help="a cap: runs end by early stopping or max_minutes"),
    batch_size: str = typer.Option("256", help="global batch, split across Ray workers"),
    lr: str = typer.Option("0.002"),
    weight_decay: str = typer.Option("0.01"),
    loss: str = typer.Option(
        "auto", help="auto (by catalog size) | ce (full softmax, chunked) | sampled (sampled softmax, log-Q corrected)"
    ),
    num_negatives: str = typer.Option("2048", help="negatives per batch for loss=sampled"),
    label_smoothing: str = typer.Option(None, help="defaults to LOSS_LABEL_SMOOTH"),
    ce_chunk_mb: str = typer.Option("256", help="loss=ce: MB of logits held at once (bounds peak memory)"),
    precision: str = typer.Option("auto", help="auto (bf16 where the hardware has it) | bf16 | fp32"),
    max_minutes: str = typer.Option("0", help="stop before an epoch that would end past this many minutes; 0 = none"),
    anneal_to_budget: str = typer.Option("true", help="with max_minutes, decay the lr linearly to 0 as the budget ends"),
    epoch_windows: str = typer.Option("0", help="training windows sampled per epoch (validate that often); 0 = all"),
    use_context: str = typer.Option("true", help="mix the hour and weekday of the next play in"),
    cosine_scale: str = typer.Option("16", help="score by cosine similarity x this; 0 = inner product"),
    num_workers: str = typer.Option("2", help="Ray Train workers"),
    trainer: str = typer.Option("ray", help="ray | local (in-process, no Ray)"),
    seed: str = typer.Option("42"),
    patience: str = typer.Option("2", help="epochs without val_ndcg_at_10 gain before stopping; 0 = never"),
    plateau_lr_factor: str = typer.Option("0.5", help="lr multiplier after an epoch without val gain; 1 = off"),
    data_dir: str = typer.Option(None, help="defaults to DATA_DIR"),
    resume_from: str = typer.Option("", help="state directory, run storage directory or MLflow run id"),
    val_max_cases: str = typer.Option("5000", help="per-epoch validation subset size; 0 = all"),
    val_exclude_seen: str = typer.Option("true", help="validate without the tracks of the history (false: repeats allowed)"),
    fit_repeat_bonus: str = typer.Option("true", help="with repeats allowed, fit the repeat bonus on validation"),
    neighbour_mix: str = typer.Option("true", help="after training, mix session neighbours' votes in when validation gains"),
    storage_path: str = typer.Option("outputs/train", help="where epoch states and Ray checkpoints go"),
    progress: str = typer.Option("true", help="progress bar per epoch"),
) -> None:
    raw = dict(
        model=model, d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=dropout,
        max_seq_len=max_seq_len, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        loss=loss, num_negatives=num_negatives, label_smoothing=label_smoothing, ce_chunk_mb=ce_chunk_mb,
        precision=precision, max_minutes=max_minutes, anneal_to_budget=anneal_to_budget, epoch_windows=epoch_windows, use_context=use_context,
        cosine_scale=cosine_scale, fit_repeat_bonus=fit_repeat_bonus, neighbour_mix=neighbour_mix,
        num_workers=num_workers, trainer=trainer, seed=seed, patience=patience, plateau_lr_factor=plateau_lr_factor, data_dir=data_dir,
        resume_from=resume_from, val_max_cases=val_max_cases, val_exclude_seen=val_exclude_seen, storage_path=storage_path,
    )
    with cli_errors("train"):
        settings = get_settings()
        opt = lambda v, conv: None if v is None else conv(v)  # noqa: E731
        params = TrainParams.from_settings(
            settings,
            model=model,
            d_model=opt(d_model, lambda v: as_int(v, "d_model")),
            n_layers=as_int(n_layers, "n_layers"),
            n_heads=as_int(n_heads, "n_heads"),
            dropout=_float(dropout, "dropout"),
            max_seq_len=opt(max_seq_len, lambda v: as_int(v, "max_seq_len")),
            epochs=as_int(epochs, "epochs"),
            batch_size=as_int(batch_size, "batch_size"),
            lr=_float(lr, "lr"),
            weight_decay=_float(weight_decay, "weight_decay"),
            loss=loss,
            num_negatives=as_int(num_negatives, "num_negatives"),
            label_smoothing=opt(label_smoothing, lambda v: _float(v, "label_smoothing")),
            ce_chunk_mb=_float(ce_chunk_mb, "ce_chunk_mb"),
            precision=precision,
            max_minutes=_float(max_minutes, "max_minutes"),
            anneal_to_budget=as_bool(anneal_to_budget, "anneal_to_budget"),
            epoch_windows=as_int(epoch_windows, "epoch_windows"),
            use_context=as_bool(use_context, "use_context"),
            cosine_scale=_float(cosine_scale, "cosine_scale"),
            num_workers=as_int(num_workers, "num_workers"),
            trainer=trainer,
            seed=as_int(seed, "seed"),
            patience=as_int(patience, "patience"),
            plateau_lr_factor=_float(plateau_lr_factor, "plateau_lr_factor"),
            data_dir=data_dir,
            resume_from=resume_from or "",
            val_max_cases=as_int(val_max_cases, "val_max_cases"),
            val_exclude_seen=as_bool(val_exclude_seen, "val_exclude_seen"),
            fit_repeat_bonus=as_bool(fit_repeat_bonus, "fit_repeat_bonus"),
            neighbour_mix=as_bool(neighbour_mix, "neighbour_mix"),
            storage_path=storage_path,
            progress=as_bool(progress, "progress"),
        )
        try:
            params.validate()
        except FileNotFoundError:
            require_splits(params.data_dir)    # says what to run first
            raise
        outcome = run_train_stage(params, log_params={k: v for k, v in raw.items() if v is not None}, settings=settings)
        best = outcome.summary.get("best_metrics", {})
        mix = outcome.neighbour_mix
        if mix is not None:
            typer.echo(
                f"train: session neighbours {'mixed in' if mix.kept else 'not mixed in (no validation gain)'}: "
                f"val_ndcg_at_10 {mix.before.get('ndcg_at_10', float('nan')):.4f} -> {mix.after.get('ndcg_at_10', float('nan')):.4f} "
                f"on {mix.cases:,} val cases (weight {mix.weight:.3g}, repeat bonus {mix.repeat_bonus:.3g})"
            )
        typer.echo(
            f"train: {params.model} best epoch {outcome.summary.get('best_epoch')} "
            f"(stopped by {outcome.summary.get('stop_reason', 'epochs')}) "
            f"val_ndcg_at_10={best.get('val_ndcg_at_10', float('nan')):.4f} "
            f"val_recall_at_20={best.get('val_recall_at_20', float('nan')):.4f} "
            f"in {outcome.wall_seconds:,.0f}s; {run_location(outcome.run_id)}, checkpoint runs:/{outcome.run_id}/checkpoint"
        )
        echo_next(*after_training(outcome.run_id, params.data_dir, settings.DATA_DIR))


if __name__ == "__main__":
    app()
