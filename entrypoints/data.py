"""Entry point `data`: synthetic logs (`source=synthetic`) or a real log file -> data_dir/raw."""

from __future__ import annotations

import typer

from entrypoints.common import as_int, cli_errors, default_data_dir, echo_next, next_stage_commands
from playlistai.config import get_settings
from playlistai.data.ingest import DEFAULT_MAX_ID_LENGTH, DEFAULT_TIME_MAX, DEFAULT_TIME_MIN, Limits
from playlistai.data.stages import run_data
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
def main(
    source: str = typer.Option("synthetic", help="'synthetic' or the path of a log file"),
    format: str = typer.Option("auto", help="auto | csv | tsv | parquet | lastfm1k (CSV and TSV may be .gz)"),
    size: str = typer.Option("default", help="synthetic size: tiny | default | large"),
    seed: str = typer.Option("42"),
    data_dir: str = typer.Option(None, help="defaults to DATA_DIR"),
    user_col: str = typer.Option("user_id"),
    track_col: str = typer.Option("track_id"),
    ts_col: str = typer.Option("ts"),
    artist_col: str = typer.Option("artist_id"),
    genre_col: str = typer.Option("genre"),
    time_unit: str = typer.Option("auto", help="auto | s | ms | iso"),
    time_min: str = typer.Option(DEFAULT_TIME_MIN, help="earliest plausible time: an ISO-8601 date or time (UTC "
                                 "unless it has an offset), 'now' or 'now-Nd'"),
    time_max: str = typer.Option(DEFAULT_TIME_MAX, help="latest plausible time, as time_min ('now+1d': a day ahead)"),
    max_id_length: str = typer.Option(str(DEFAULT_MAX_ID_LENGTH), help="longest user, track, artist or genre id "
                                      "(characters)"),
) -> None:
    with cli_errors("data"):
        settings = get_settings()
        data_dir = data_dir or default_data_dir(source, settings.DATA_DIR)
        seed_int = as_int(seed, "seed", minimum=0)
        max_id_int = as_int(max_id_length, "max_id_length", minimum=1)
        if source != "synthetic":
            Limits.parse(time_min, time_max, max_id_int)  # a bad limit fails before a run is opened
        params = dict(source=source, format=format, size=size, seed=seed_int, data_dir=data_dir, user_col=user_col,
                      track_col=track_col, ts_col=ts_col, artist_col=artist_col, genre_col=genre_col,
                      time_unit=time_unit, time_min=time_min, time_max=time_max, max_id_length=max_id_int,
                      vocab_min_freq=settings.VOCAB_MIN_FREQ)
        with stage_run("data", params, settings=settings) as run:
            metrics = run_data(
                data_dir, source=source, size=size, seed=seed_int, fmt=format, time_unit=time_unit,
                columns=dict(user_col=user_col, track_col=track_col, ts_col=ts_col, artist_col=artist_col,
                             genre_col=genre_col),
                vocab_min_freq=settings.VOCAB_MIN_FREQ, time_min=time_min, time_max=time_max,
                max_id_length=max_id_int,
            )
        summary = ", ".join(f"{k}={metrics[k]:,.0f}" for k in ("users", "tracks", "events") if k in metrics)
        typer.echo(f"data: {summary} -> {data_dir}/raw; {run_location(run.info.run_id)}")
        echo_next(*next_stage_commands("preprocess", data_dir, settings.DATA_DIR))


if __name__ == "__main__":
    app()
