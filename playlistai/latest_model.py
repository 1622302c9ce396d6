"""The checkpoint of the latest finished training on the splits a data directory holds now.

    python -m playlistai.latest_model --data-dir data/diginetica sasrec gru4rec
    runs:/<id>/checkpoint,runs:/<id>/checkpoint        (what `evaluate -P model_uri=...` takes)
    python -m playlistai.latest_model --data-dir data --run-id
    <id>                                               (the latest of any model: `make export`)

Make recipes run `train` and `evaluate` as separate `mlflow run` commands, so the evaluation needs
the id of the run the training just made. Every training run is tagged with its model family and
with `data_hash`, the hash of the split files and vocabulary it trained on (the splits stage tags its
run with the same hash). Matching on that hash rather than on the `data_dir` string finds a model
trained on exactly the splits on disk now, however the path was spelled, and never one trained on
splits that were rebuilt since: its vocabulary would not match and the evaluation would refuse it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import mlflow

from playlistai.data.layout import SPLITS, DataLayout
from playlistai.tracking import configure_mlflow, files_hash


class NoTrainedModel(LookupError):
    """No finished training run matches; the message says what to run."""


def splits_hash(data_dir: str | Path) -> str:
    """The `data_hash` tag of the splits stage and of every training run on these splits."""
    layout = DataLayout.of(data_dir)
    files = [layout.require(layout.split(s), "splits") for s in SPLITS] + [layout.require(layout.vocab, "splits")]
    return files_hash(files)


def latest_training_run(model: str | None, data_dir: str | Path, client: mlflow.MlflowClient | None = None,
                        experiment_id: str | None = None) -> str:
    """The id of the most recent FINISHED `train` run of `model` (of any model when None) on the
    splits in `data_dir`."""
    family = None
    if model is not None:
        from playlistai.models.config import canonical_family  # imports torch: only when asked

        family = canonical_family(model)
    experiment_id = experiment_id or configure_mlflow()
    client = client or mlflow.MlflowClient()
    data_hash = splits_hash(data_dir)
    of_family = f"tags.model_family = '{family}' and " if family else ""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.stage = 'train' and {of_family}"
                       f"tags.data_hash = '{data_hash}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise NoTrainedModel(f"no finished `train` run{f' of {family}' if family else ''} on the splits in "
                             f"{data_dir} (data_hash {data_hash[:12]}); train one first: "
                             f"mlflow run . -e train --env-manager local -P model={family or 'sasrec'} "
                             f"-P data_dir={data_dir}")
    return runs[0].info.run_id


def checkpoint_uris(models: Sequence[str], data_dir: str | Path) -> list[str]:
    experiment_id = configure_mlflow()
    client = mlflow.MlflowClient()
    return [f"runs:/{latest_training_run(m, data_dir, client, experiment_id)}/checkpoint" for m in models]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m playlistai.latest_model", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="sasrec | gru4rec (also comma-separated)")
    parser.add_argument("--data-dir", required=True, help="the data directory the models trained on")
    parser.add_argument("--run-id", action="store_true",
                        help="print the run id of the latest training of any of the models (of any model when none is named)")
    args = parser.parse_args(argv)
    models = [m for arg in args.models for m in arg.split(",") if m.strip()]
    if not models and not args.run_id:
        parser.error("name at least one model, or pass --run-id")
    try:
        if args.run_id:
            client = mlflow.MlflowClient()
            experiment_id = configure_mlflow()
            found, missing = [], None
            for model in models or [None]:
                try:
                    found.append(latest_training_run(model, args.data_dir, client, experiment_id))
                except NoTrainedModel as exc:
                    missing = exc
            if not found:
                raise missing
            print(max(found, key=lambda run_id: client.get_run(run_id).info.start_time))
        else:
            print(",".join(checkpoint_uris(models, args.data_dir)))
    except (NoTrainedModel, FileNotFoundError, ValueError) as exc:
        # one line, no traceback: make prints it and stops before an evaluation without its model
        print(f"error: latest_model: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
