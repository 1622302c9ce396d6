"""Entry point `splits`: sessions -> train/val/test Parquet and the vocabulary (`vocab_scope`: of the
training split, or of training and validation)."""

from __future__ import annotations

import typer

from entrypoints.common import as_int, cli_errors, echo_next, next_stage_commands
from playlistai.config import get_settings
from playlistai.data.splits import parse_vocab_scope
from playlistai.data.stages import run_splits
from playlistai.pipeline import tiny_data_warning
from playlistai.tracking import run_location, stage_run

app = typer.Typer(add_completion=False)


@app.command()
def main(
    data_dir: str = typer.Option(None, help="defaults to DATA_DIR"),
    strategy: str = typer.Option("temporal", help="temporal | leave_one_out"),
    val_frac: float = typer.Option(0.1),
    test_frac: float = typer.Option(0.1),
    vocab_min_freq: str = typer.Option(None, help="defaults to VOCAB_MIN_FREQ"),
    max_seq_len: str = typer.Option(None, help="defaults to MAX_SEQ_LEN"),
    vocab_scope: str = typer.Option("train", help="train | train_val: the splits whose tracks get an index"),
) -> None:
    with cli_errors("splits"):
        settings = get_settings()
        params = dict(
            data_dir=data_dir or settings.DATA_DIR,
            strategy=strategy,
            val_frac=val_frac,
            test_frac=test_frac,
            vocab_min_freq=as_int(vocab_min_freq or settings.VOCAB_MIN_FREQ, "vocab_min_freq", minimum=1),
            max_seq_len=as_int(max_seq_len or settings.MAX_SEQ_LEN, "max_seq_len", minimum=2),
            vocab_scope=parse_vocab_scope(vocab_scope),
        )
        with stage_run("splits", params, settings=settings) as run:
            m = run_splits(**params)
        typer.echo(f"splits: vocab {m['vocab_size']:,.0f} tracks; train/val/test sessions "
                   f"{m['train_sessions']:,.0f}/{m['val_sessions']:,.0f}/{m['test_sessions']:,.0f}; "
                   f"{run_location(run.info.run_id)}")
        warning = tiny_data_warning(m)
        if warning:
            typer.echo(f"warning: splits: {warning}", err=True)
        echo_next(*next_stage_commands("train", params["data_dir"], settings.DATA_DIR))


if __name__ == "__main__":
    app()
