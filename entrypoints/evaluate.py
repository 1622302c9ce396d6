"""Entry point `evaluate`: a model and/or the baselines and the oracle on a split -> report in MLflow."""

from __future__ import annotations

import typer

from entrypoints.common import after_training, as_bool, as_int, cli_errors, echo_next, require_splits
from playlistai.config import get_settings
from playlistai.evaluation.stage import check_split, parse_baselines, parse_ks, run_evaluate
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model_uri: str = typer.Option(
        "", help="checkpoint dir, runs:/<id>/checkpoint or models:/... (comma-separated for several); empty = baselines only"
    ),
    split: str = typer.Option("test", help="val | test (train only with --allow-train-split true)"),
    ks: str = typer.Option("10,20", help="cut-offs, comma-separated (10 and 20 are always reported)"),
    exclude_seen: str = typer.Option("true", help="exclude tracks of the input from the ranking"),
    baselines: str = typer.Option("true", help="true | false | comma-separated names"),
    data_dir: str = typer.Option(None, help="defaults to DATA_DIR"),
    allow_train_split: str = typer.Option("false", help="allow evaluating on the training split"),
    max_seq_len: str = typer.Option("0", help="0 = the model's, else the splits stage's"),
    n_resamples: str = typer.Option("1000", help="bootstrap resamples"),
    seed: str = typer.Option("0"),
    batch_size: str = typer.Option("512"),
) -> None:
    with cli_errors("evaluate"):
        settings = get_settings()
        params = dict(
            data_dir=data_dir or settings.DATA_DIR,
            model_uri=model_uri.strip(),
            split=split.strip(),
            ks=parse_ks(ks),
            exclude_seen=as_bool(exclude_seen, "exclude_seen"),
            baselines=parse_baselines(baselines),
            allow_train_split=as_bool(allow_train_split, "allow_train_split"),
            max_seq_len=as_int(max_seq_len, "max_seq_len", minimum=0) or None,
            n_resamples=as_int(n_resamples, "n_resamples", minimum=10),
            seed=as_int(seed, "seed", minimum=0),
            batch_size=as_int(batch_size, "batch_size", minimum=1),
        )
        # refused before any run is opened: a leaking evaluation should leave no trace to misread
        check_split(params["split"], params["allow_train_split"])
        require_splits(params["data_dir"])
        logged = {**params, "ks": ",".join(map(str, params["ks"])), "baselines": ",".join(params["baselines"])}
        with stage_run("evaluate", logged, settings=settings) as run:
            report = run_evaluate(**params)
        for row in report["rows"]:
            m = row["metrics"]
            typer.echo(f"evaluate: {report['split']} {row['name']:<14} recall@20 {m['recall_at_20']:.4f} "
                       f"ndcg@10 {m['ndcg_at_10']:.4f} ({row['kind']})")
        typer.echo(f"evaluate: {run_location(run.info.run_id)}")
        uri = params["model_uri"]
        if uri.startswith("runs:/") and uri.rstrip("/").endswith("/checkpoint"):
            echo_next(after_training(uri.removeprefix("runs:/").split("/", 1)[0], params["data_dir"], settings.DATA_DIR)[0])
        elif not uri:
            echo_next("make train" + (f" DATA_DIR={params['data_dir']}" if params["data_dir"] != settings.DATA_DIR else ""))


if __name__ == "__main__":
    app()
