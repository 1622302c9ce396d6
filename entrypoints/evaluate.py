"""Entry point `evaluate`: a model and/or the baselines and the oracle on a split -> report in MLflow."""

from __future__ import annotations

from dataclasses import asdict, replace

import typer

from entrypoints.common import after_training, cli_errors, echo_next, require_splits, stage_command
from entrypoints.params import Received, options, parse
from playlistai.cli import run_cli
from playlistai.config import get_settings
from playlistai.evaluation.stage import (
    EvaluateParams,
    check_split,
    compute_evaluation,
    log_report,
    parse_baselines,
    parse_ks,
)
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
@options(EvaluateParams)
def main(received: Received) -> None:
    with cli_errors("evaluate"):
        settings = get_settings()
        p = parse(EvaluateParams, received, settings)
        p = replace(p, model_uri=p.model_uri.strip(), split=p.split.strip())
        logged = {**asdict(p), "ks": ",".join(map(str, parse_ks(p.ks))),
                  "baselines": ",".join(parse_baselines(p.baselines)), "max_seq_len": p.max_seq_len or None}
        # refused before any run is opened: a leaking evaluation should leave no trace to misread
        check_split(p.split, p.allow_train_split)
        require_splits(p.data_dir)
        with stage_run("evaluate", logged, settings=settings) as run:
            report = compute_evaluation(p)
            log_report(report)
        for row in report.rows:
            m = row.metrics
            typer.echo(f"evaluate: {report.split} {row.name:<14} recall@20 {m['recall_at_20']:.4f} "
                       f"ndcg@10 {m['ndcg_at_10']:.4f} ({row.kind})")
        typer.echo(f"evaluate: {run_location(run.info.run_id)}")
        uri = p.model_uri
        if uri.startswith("runs:/") and uri.rstrip("/").endswith("/checkpoint"):
            echo_next(after_training(uri.removeprefix("runs:/").split("/", 1)[0], p.data_dir)[0])
        elif not uri:
            echo_next(stage_command("train", p.data_dir))


if __name__ == "__main__":
    run_cli(app)
