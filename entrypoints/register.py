"""Entry point `register`: a trained run -> a registered pyfunc version -> the promotion gate.

Rollback: `-P version=N -P promote=force` moves the production alias back to version N.
"""

from __future__ import annotations

from dataclasses import asdict

import typer

from entrypoints.common import as_int, cli_errors, echo_next, ui_command
from entrypoints.params import Received, options, parse
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.inference.ann import INDEX_TYPES as ANN_INDEX_TYPES
from playlistai.registry.promotion import PROMOTE_MODES
from playlistai.registry.stage import RegisterParams, run_register
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
@options(RegisterParams)
def main(received: Received) -> None:
    with cli_errors("register"):
        settings = get_settings()
        p = parse(RegisterParams, received, settings)
        promote = p.promote.strip().lower()
        if promote not in PROMOTE_MODES:
            raise ValueError(f"promote: expected one of {', '.join(PROMOTE_MODES)}, got {promote!r}")
        if p.ann_index not in ("auto", *ANN_INDEX_TYPES):
            raise ValueError(f"ann_index: expected auto, {', '.join(ANN_INDEX_TYPES)}, got {p.ann_index!r}")
        if not 0 < p.confidence < 1:
            raise ValueError(f"confidence: expected a value in (0, 1), got {p.confidence}")
        if not 0 < p.target_overlap <= 1:
            raise ValueError(f"target_overlap: expected a value in (0, 1], got {p.target_overlap}")
        version = p.version.strip()
        if version:
            version = str(as_int(version, "version", minimum=1))
        params = {**asdict(p), "run_id": p.run_id.strip(), "model_uri": p.model_uri.strip(), "version": version,
                  "promote": promote}
        with stage_run("register", params, settings=settings) as run:
            summary = run_register(**params)
        d = summary["decision"]
        typer.echo(f"register: {summary['model_name']} v{summary['version']}: {d['decision']} "
                   f"({summary['alias']} -> v{d['production_after']}): {d['reason']}; {run_location(run.info.run_id)}")
        echo_next("make api", ui_command(settings))


if __name__ == "__main__":
    run_cli(app)
