"""Entry point `train`: split files -> a trained SASRec or GRU4Rec, tracked in MLflow.

    python -m entrypoints.train --model sasrec --data-dir data [--trainer local] ...

The options are TrainParams' fields (entrypoints/params.py). Params are logged exactly as received
(MLproject passes "3.0" for a float param), a Settings default as the value taken; bad values fail
before any training with one line on stderr and exit status 2.
"""

from __future__ import annotations

import typer

from entrypoints.common import after_training, cli_errors, echo_next, require_splits
from entrypoints.params import Received, as_received, options, parse
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.tracking import run_location, stage_run
from playlistai.training.stage import TrainParams, plan_training, run_train_stage

app = typer.Typer(add_completion=False)


@app.command()
@options(TrainParams)
def main(received: Received) -> None:
    with cli_errors("train"):
        settings = get_settings()
        params = parse(TrainParams, received, settings)
        try:
            params.validate()
        except FileNotFoundError:
            require_splits(params.data_dir)    # says what to run first
            raise
        plan = plan_training(params, log_params=as_received(TrainParams, received), settings=settings)
        with stage_run("train", plan.run_params, tags=plan.tags, settings=settings, run_name=plan.run_name):
            outcome = run_train_stage(plan)
        best = outcome.summary.get("best_metrics", {})
        if outcome.neighbour_mix is not None:
            typer.echo(outcome.neighbour_mix.describe())
        typer.echo(
            f"train: {params.model} best epoch {outcome.summary.get('best_epoch')} "
            f"(stopped by {outcome.summary.get('stop_reason', 'epochs')}) "
            f"val_ndcg_at_10={best.get('val_ndcg_at_10', float('nan')):.4f} "
            f"val_recall_at_20={best.get('val_recall_at_20', float('nan')):.4f} "
            f"in {outcome.wall_seconds:,.0f}s; {run_location(outcome.run_id)}, checkpoint runs:/{outcome.run_id}/checkpoint"
        )
        echo_next(*after_training(outcome.run_id, params.data_dir))


if __name__ == "__main__":
    run_cli(app)
