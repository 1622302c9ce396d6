"""Entry point `register`: a trained run -> a registered pyfunc version -> the promotion gate.

Rollback: `-P version=N -P promote=force` moves the production alias back to version N.
"""

from __future__ import annotations

import typer

from entrypoints.common import as_int, cli_errors, echo_next, ui_command
from playlistai.config import get_settings
from playlistai.registry.promotion import PROMOTE_MODES
from playlistai.registry.stage import run_register
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
def main(
    run_id: str = typer.Option("", help="training run whose checkpoint/ artifact becomes a new version"),
    model_uri: str = typer.Option("", help="instead of run_id: a checkpoint directory or artifact URI"),
    version: str = typer.Option("", help="instead of run_id: an existing version to gate or roll back to"),
    promote: str = typer.Option("auto", help="auto (gate decides) | force (move the alias) | never"),
    data_dir: str = typer.Option(None, help="defaults to DATA_DIR; its test split is the gate's"),
    n_resamples: str = typer.Option("1000", help="bootstrap resamples of the gate"),
    confidence: float = typer.Option(0.95, help="confidence of the gate's interval"),
    seed: str = typer.Option("0"),
    ann_index: str = typer.Option("auto", help="auto | hnsw | ivf"),
    target_overlap: float = typer.Option(0.98, help="FAISS top-20 vs exact top-20 overlap to tune for"),
) -> None:
    with cli_errors("register"):
        settings = get_settings()
        promote = promote.strip().lower()
        if promote not in PROMOTE_MODES:
            raise ValueError(f"promote: expected one of {', '.join(PROMOTE_MODES)}, got {promote!r}")
        if ann_index not in ("auto", "hnsw", "ivf"):
            raise ValueError(f"ann_index: expected auto, hnsw or ivf, got {ann_index!r}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
        if not 0 < target_overlap <= 1:
            raise ValueError(f"target_overlap: expected a value in (0, 1], got {target_overlap}")
        version = version.strip()
        if version:
            version = str(as_int(version, "version", minimum=1))
        params = dict(
            run_id=run_id.strip(),
            model_uri=model_uri.strip(),
            version=version,
            promote=promote,
            data_dir=data_dir or settings.DATA_DIR,
            n_resamples=as_int(n_resamples, "n_resamples", minimum=10),
            confidence=confidence,
            seed=as_int(seed, "seed", minimum=0),
            ann_index=ann_index,
            target_overlap=target_overlap,
        )
        with stage_run("register", params, settings=settings) as run:
            summary = run_register(**params)
        d = summary["decision"]
        typer.echo(f"register: {summary['model_name']} v{summary['version']}: {d['decision']} "
                   f"({summary['alias']} -> v{d['production_after']}): {d['reason']}; {run_location(run.info.run_id)}")
        echo_next("make api", ui_command(settings))


if __name__ == "__main__":
    app()
