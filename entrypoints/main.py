"""Entry point `main`: the whole pipeline in one parent run, a child run per stage.

    mlflow run . -e main --env-manager local -P size=tiny -P epochs=1
    mlflow run . -e main --env-manager local -P source=/path/plays.csv -P user_col=listener ...

With `source` a log file, the data stage reads it (with the data params) into a data_dir of its own
(`data/<file name>` unless data_dir is given), never into the demo's `data/`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from entrypoints.common import SYNTHETIC, as_bool, as_int, cli_errors, default_data_dir, echo_next, ui_command
from playlistai.config import get_settings
from playlistai.pipeline import PipelineError, parse_models, run_pipeline
from playlistai.registry.promotion import PROMOTE_MODES
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
def main(
    size: str = typer.Option("default", help="synthetic dataset size: tiny | default | large"),
    seed: str = typer.Option("42"),
    data_dir: str = typer.Option(None, help="defaults to DATA_DIR, or data/<file name> for a source file"),
    source: str = typer.Option(SYNTHETIC, help="'synthetic' or the path of a log file (the data stage's source)"),
    format: str = typer.Option("auto", help="auto | csv | tsv | parquet | lastfm1k (a source file's format)"),
    user_col: str = typer.Option("user_id"),
    track_col: str = typer.Option("track_id"),
    ts_col: str = typer.Option("ts"),
    artist_col: str = typer.Option("artist_id"),
    genre_col: str = typer.Option("genre"),
    time_unit: str = typer.Option("auto", help="auto | s | ms | iso"),
    models: str = typer.Option("sasrec,gru4rec", help="models to train, comma-separated; the best is registered"),
    epochs: str = typer.Option("0", help="0 = the train stage's default"),
    num_workers: str = typer.Option("0", help="Ray Train workers; 0 = the train stage's default"),
    trainer: str = typer.Option("", help="ray | local; empty = the train stage's default"),
    d_model: str = typer.Option("0", help="0 = the train stage's default (MODEL_D)"),
    batch_size: str = typer.Option("0", help="0 = the train stage's default"),
    patience: str = typer.Option("-1", help="-1 = the train stage's default"),
    baselines: str = typer.Option("true", help="evaluate the baselines beside the models"),
    promote: str = typer.Option("auto", help="auto | force | never (the register stage's gate)"),
    n_resamples: str = typer.Option("1000", help="bootstrap resamples (evaluation and gate)"),
) -> None:
    with cli_errors("main"):
        settings = get_settings()
        if promote not in PROMOTE_MODES:
            raise ValueError(f"promote: expected one of {', '.join(PROMOTE_MODES)}, got {promote!r}")
        optional = lambda value, name, minimum: as_int(value, name, minimum=minimum) or None  # noqa: E731
        train_params = {
            "d_model": optional(d_model, "d_model", 0),
            "batch_size": optional(batch_size, "batch_size", 0),
        }
        if as_int(patience, "patience", minimum=-1) >= 0:
            train_params["patience"] = as_int(patience, "patience")
        source = source.strip() or SYNTHETIC
        data_params = {}
        if source != SYNTHETIC:
            if not Path(source).is_file():
                raise FileNotFoundError(f"source: no such file {source!r} (or pass source=synthetic)")
            columns = dict(user_col=user_col, track_col=track_col, ts_col=ts_col, artist_col=artist_col,
                           genre_col=genre_col)
            data_params = dict(source=str(Path(source).resolve()), format=format, time_unit=time_unit, **columns)
        params = dict(
            size=size,
            seed=as_int(seed, "seed", minimum=0),
            data_dir=data_dir or default_data_dir(source, settings.DATA_DIR),
            data_params=data_params,
            models=parse_models(models),
            epochs=optional(epochs, "epochs", 0),
            num_workers=optional(num_workers, "num_workers", 0),
            trainer=trainer.strip() or None,
            train_params={k: v for k, v in train_params.items() if v is not None},
            baselines=as_bool(baselines, "baselines"),
            promote=promote,
            n_resamples=as_int(n_resamples, "n_resamples", minimum=10),
        )
        logged = {**{k: v for k, v in params.items() if k not in ("train_params", "data_params")},
                  **params["train_params"], **params["data_params"], "models": ",".join(params["models"])}
        with stage_run("main", logged, settings=settings) as run:
            try:
                summary = run_pipeline(**params)
            except PipelineError as exc:
                raise ValueError(str(exc)) from None
        for model, m in summary["models"].items():
            typer.echo(f"main: {model:<8} test ndcg@10 {m['test_ndcg_at_10']:.4f} recall@20 {m.get('test_recall_at_20', 0):.4f}")
        typer.echo(f"main: registered {summary['best_model']} as v{summary['registered_version']}: "
                   f"{summary['gate_decision']} ({summary['gate_reason']})")
        if summary.get("data_warning"):
            typer.echo(f"warning: main: {summary['data_warning']}", err=True)
        typer.echo(f"main: {run_location(run.info.run_id)}, a child run per stage")
        echo_next("make api", ui_command(settings))


if __name__ == "__main__":
    app()
