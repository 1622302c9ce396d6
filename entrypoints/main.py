"""Entry point `main`: the whole pipeline in one parent run, a child run per stage.

    mlflow run . -e main --env-manager local -P size=tiny -P epochs=1
    mlflow run . -e main --env-manager local -P source=/path/plays.csv -P user_col=listener ...

With `source` a log file, the data stage reads it (with the data params) into a data_dir of its own
(`data/<file name>` unless data_dir is given), never into the demo's `data/`. It ends with one
summary block (`playlistai.pipeline.summary_text`), printed and set as the run's description.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import typer

from entrypoints.common import SYNTHETIC, cli_errors, default_data_dir, echo_next, ui_command
from entrypoints.params import Received, options, parse
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.data.ray_engine import parse_engine
from playlistai.pipeline import MainParams, PipelineError, parse_models, run_pipeline, summary_text
from playlistai.registry.promotion import PROMOTE_MODES
from playlistai.tracking import DESCRIPTION_TAG, MAX_TAG_CHARS, run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
@options(MainParams)
def main(received: Received) -> None:
    with cli_errors("main"):
        settings = get_settings()
        p = parse(MainParams, received, settings)
        if p.promote not in PROMOTE_MODES:
            raise ValueError(f"promote: expected one of {', '.join(PROMOTE_MODES)}, got {p.promote!r}")
        train_params = {"d_model": p.d_model or None, "batch_size": p.batch_size or None,
                        "patience": p.patience if p.patience >= 0 else None}
        source = p.source.strip() or SYNTHETIC
        data_params = {}
        if source != SYNTHETIC:
            if not Path(source).is_file():
                raise FileNotFoundError(f"source: no such file {source!r} (or pass source=synthetic)")
            data_params = dict(source=str(Path(source).resolve()), format=p.format, time_unit=p.time_unit,
                               **p.columns())
        params = dict(
            size=p.size,
            seed=p.seed,
            data_dir=p.data_dir or default_data_dir(source, settings.DATA_DIR),
            data_params=data_params,
            models=parse_models(p.models),
            epochs=p.epochs or None,
            num_workers=p.num_workers or None,
            trainer=p.trainer.strip() or None,
            train_params={k: v for k, v in train_params.items() if v is not None},
            baselines=p.baselines,
            promote=p.promote,
            n_resamples=p.n_resamples,
            engine=parse_engine(p.engine),
        )
        logged = {**{k: v for k, v in params.items() if k not in ("train_params", "data_params")},
                  **params["train_params"], **params["data_params"], "models": ",".join(params["models"])}
        with stage_run("main", logged, settings=settings) as run:
            try:
                summary = run_pipeline(**params)
            except PipelineError as exc:
                raise ValueError(str(exc)) from None
            text = summary_text(summary, ui_command=ui_command(settings), api_address=f"localhost:{settings.API_PORT}",
                                run_location=f"{run_location(run.info.run_id)}, a child run per stage")
            # the run's description: whoever opens the run in MLflow's UI reads what the terminal showed
            mlflow.set_tag(DESCRIPTION_TAG, text[:MAX_TAG_CHARS])
        typer.echo(text)
        # every stage ends with the one line that names its run (docs/ARCHITECTURE.md, "Runs")
        typer.echo(f"main: {run_location(run.info.run_id)}, a child run per stage")
        if summary.get("data_warning"):
            typer.echo(f"warning: main: {summary['data_warning']}", err=True)
        echo_next("make api", ui_command(settings))


if __name__ == "__main__":
    run_cli(app)
