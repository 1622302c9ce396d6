"""Entry point `splits`: sessions -> train/val/test Parquet and the vocabulary (`vocab_scope`: of the
training split, or of training and validation)."""

from __future__ import annotations

from dataclasses import asdict

import typer

from entrypoints.common import cli_errors, echo_next, next_stage_commands
from entrypoints.params import Received, options, parse
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.data.ray_engine import parse_engine
from playlistai.data.splits import parse_vocab_scope
from playlistai.data.stages import SplitsParams, run_splits
from playlistai.pipeline import tiny_data_warning
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
@options(SplitsParams)
def main(received: Received) -> None:
    with cli_errors("splits"):
        settings = get_settings()
        params = asdict(parse(SplitsParams, received, settings))
        params["vocab_scope"] = parse_vocab_scope(params["vocab_scope"])
        params["engine"] = parse_engine(params["engine"])
        with stage_run("splits", params, settings=settings) as run:
            m = run_splits(**params)
        typer.echo(f"splits: vocab {m['vocab_size']:,.0f} tracks; train/val/test sessions "
                   f"{m['train_sessions']:,.0f}/{m['val_sessions']:,.0f}/{m['test_sessions']:,.0f}; "
                   f"{run_location(run.info.run_id)}")
        warning = tiny_data_warning(m)
        if warning:
            typer.echo(f"warning: splits: {warning}", err=True)
        echo_next(*next_stage_commands("train", params["data_dir"]))


if __name__ == "__main__":
    run_cli(app)
