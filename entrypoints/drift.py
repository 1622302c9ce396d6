"""Entry point `drift`: live request features vs the production model's training features.

The logic is monitoring/drift_job.py; this parses the params, opens the MLflow run and prints the result.
"""

from __future__ import annotations

import typer

from entrypoints.common import cli_errors, echo_next
from entrypoints.params import Received, options, parse
from monitoring.drift_job import DriftJobConfig, DriftParams, push_warning, run_drift_job, summary_lines
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
@options(DriftParams)
def main(received: Received) -> None:
    with cli_errors("drift"):
        settings = get_settings()
        p = parse(DriftParams, received, settings)
        config = DriftJobConfig.from_settings(
            settings, model_uri=p.model_uri, current=p.current, pushgateway_url=p.pushgateway_url,
            window=p.window or None, min_samples=p.min_samples or None, p_val=p.p_val or None,
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
    run_cli(app)
