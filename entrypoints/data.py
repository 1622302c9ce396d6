"""Entry point `data`: synthetic logs (`source=synthetic`) or a real log file -> data_dir/raw."""

from __future__ import annotations

from dataclasses import asdict

import typer

from entrypoints.common import cli_errors, default_data_dir, echo_next, next_stage_commands
from entrypoints.params import Received, options, parse
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.data.ingest import Limits
from playlistai.data.stages import DataParams, run_data
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
@options(DataParams)
def main(received: Received) -> None:
    with cli_errors("data"):
        settings = get_settings()
        p = parse(DataParams, received, settings)
        data_dir = p.data_dir or default_data_dir(p.source, settings.DATA_DIR)
        if p.source != "synthetic":
            Limits.parse(p.time_min, p.time_max, p.max_id_length)  # a bad limit fails before a run is opened
        params = {**asdict(p), "data_dir": data_dir, "vocab_min_freq": settings.VOCAB_MIN_FREQ}
        with stage_run("data", params, settings=settings) as run:
            metrics = run_data(
                data_dir, source=p.source, size=p.size, seed=p.seed, fmt=p.format, time_unit=p.time_unit,
                columns=p.columns(), vocab_min_freq=settings.VOCAB_MIN_FREQ, time_min=p.time_min,
                time_max=p.time_max, max_id_length=p.max_id_length,
            )
        summary = ", ".join(f"{k}={metrics[k]:,.0f}" for k in ("users", "tracks", "events") if k in metrics)
        typer.echo(f"data: {summary} -> {data_dir}/raw; {run_location(run.info.run_id)}")
        echo_next(*next_stage_commands("preprocess", data_dir))


if __name__ == "__main__":
    run_cli(app)
