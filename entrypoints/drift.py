"""Entry point `drift`: live request features vs the production model's training features.

The logic is monitoring/drift_job.py; this parses the params, opens the MLflow run and prints the result.
"""

from __future__ import annotations

import typer

from entrypoints.common import as_int, cli_errors, echo_next
from monitoring.drift_job import DriftJobConfig, push_warning, run_drift_job, summary_lines
from playlistai.config import get_settings
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model_uri: str = typer.Option("", help="reference model; defaults to models:/REGISTERED_MODEL_NAME@MODEL_ALIAS"),
    current: str = typer.Option("stream", help="`stream` (the API's Redis stream) or a Parquet file of rows"),
    window: str = typer.Option("0", help="latest requests to test; 0 = DRIFT_WINDOW"),
    min_samples: str = typer.Option("0", help="fewer rows: not enough data; 0 = DRIFT_MIN_SAMPLES"),
    p_val: float = typer.Option(0.0, help="family-wise false-alarm rate; 0 = DRIFT_P_VAL"),
    pushgateway_url: str = typer.Option("", help="defaults to PUSHGATEWAY_URL"),
) -> None:
    with cli_errors("drift"):
        settings = get_settings()
        config = DriftJobConfig.from_settings(
            settings, model_uri=model_uri, current=current, pushgateway_url=pushgateway_url,
            window=as_int(window, "window", minimum=0) or None,
            min_samples=as_int(min_samples, "min_samples", minimum=0) or None,
            p_val=p_val or None,
        )
        params = {k: v for k, v in config.__dict__.items() if k != "redis_url"}
        with stage_run("drift", params, settings=settings) as run:
            state = run_drift_job(config)
        typer.echo("\n".join(summary_lines(state)))
        warning = push_warning(state)
        if warning:
            typer.echo(warning, err=True)
        typer.echo(f"drift: {state['status']}; {run_location(run.info.run_id)}")
        echo_next(f"curl -s 127.0.0.1:{settings.API_PORT}/metrics | grep ^drift_", "make drift REPLAY=hour")


if __name__ == "__main__":
    app()
