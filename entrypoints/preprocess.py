"""Entry point `preprocess`: data_dir/raw/events.parquet -> sessions."""

from __future__ import annotations

from dataclasses import asdict

import typer

from entrypoints.common import cli_errors, echo_next, next_stage_commands
from entrypoints.params import Received, options, parse
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.data.ray_engine import parse_engine
from playlistai.data.stages import PreprocessParams, run_preprocess
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
@options(PreprocessParams)
def main(received: Received) -> None:
    with cli_errors("preprocess"):
        settings = get_settings()
        params = asdict(parse(PreprocessParams, received, settings))
        params["engine"] = parse_engine(params["engine"])
        with stage_run("preprocess", params, settings=settings) as run:
            m = run_preprocess(**params)
        typer.echo(f"preprocess: {m['sessions']:,.0f} sessions, {m['events_out']:,.0f} events, "
                   f"mean length {m['session_len_mean']:.2f}; {run_location(run.info.run_id)}")
        echo_next(*next_stage_commands("splits", params["data_dir"]))


if __name__ == "__main__":
    run_cli(app)
