"""Entry point `preprocess`: data_dir/raw/events.parquet -> sessions."""

from __future__ import annotations

import typer

from entrypoints.common import as_bool, as_int, cli_errors, echo_next, next_stage_commands
from playlistai.config import get_settings
from playlistai.data.stages import run_preprocess
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
def main(
    data_dir: str = typer.Option(None, help="defaults to DATA_DIR"),
    session_gap_min: float = typer.Option(None, help="defaults to SESSION_GAP_MIN"),
    min_session_len: str = typer.Option("2"),
    collapse_repeats: str = typer.Option("false"),
    timezone: str = typer.Option(None, help="defaults to TIMEZONE (UTC)"),
) -> None:
    with cli_errors("preprocess"):
        settings = get_settings()
        params = dict(
            data_dir=data_dir or settings.DATA_DIR,
            session_gap_min=session_gap_min if session_gap_min is not None else settings.SESSION_GAP_MIN,
            min_session_len=as_int(min_session_len, "min_session_len", minimum=1),
            collapse_repeats=as_bool(collapse_repeats, "collapse_repeats"),
            timezone=timezone or settings.TIMEZONE,
        )
        with stage_run("preprocess", params, settings=settings) as run:
            m = run_preprocess(**params)
        typer.echo(f"preprocess: {m['sessions']:,.0f} sessions, {m['events_out']:,.0f} events, "
                   f"mean length {m['session_len_mean']:.2f}; {run_location(run.info.run_id)}")
        echo_next(*next_stage_commands("splits", params["data_dir"], settings.DATA_DIR))


if __name__ == "__main__":
    app()
