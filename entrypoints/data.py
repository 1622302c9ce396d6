"""Entry point `data`: synthetic logs (`source=synthetic`) or a real log file -> data_dir/raw."""

from __future__ import annotations

import typer

from entrypoints.common import as_int, cli_errors
from playlistai.config import get_settings
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
) -> None:
    with cli_errors("data"):
        settings = get_settings()
        data_dir = data_dir or settings.DATA_DIR
        seed_int = as_int(seed, "seed", minimum=0)
        params = dict(source=source, format=format, size=size, seed=seed_int, data_dir=data_dir, user_col=user_col,
                      track_col=track_col, ts_col=ts_col, artist_col=artist_col, genre_col=genre_col,
                      time_unit=time_unit, vocab_min_freq=settings.VOCAB_MIN_FREQ)
        with stage_run("data", params, settings=settings) as run:
            metrics = run_data(
                data_dir, source=source, size=size, seed=seed_int, fmt=format, time_unit=time_unit,
                columns=dict(user_col=user_col, track_col=track_col, ts_col=ts_col, artist_col=artist_col,
                             genre_col=genre_col),
                vocab_min_freq=settings.VOCAB_MIN_FREQ,
            )
        summary = ", ".join(f"{k}={metrics[k]:,.0f}" for k in ("users", "tracks", "events") if k in metrics)
        typer.echo(f"data: {summary} -> {data_dir}/raw; {run_location(run.info.run_id)}")


if __name__ == "__main__":
    app()
