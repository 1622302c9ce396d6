"""The `train` stage: validated params -> one MLflow run with per-epoch curves, the best
checkpoint (artifact `checkpoint/`) and a training-curve figure (artifact `plots/`).

Every param is checked before any data is read or any worker started, so a typo fails in a second
with a message that names the param.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlflow

from playlistai.config import Settings, get_settings
from playlistai.data.layout import SPLITS, DataLayout
from playlistai.data.sequences import load_vocab
from playlistai.models import ModelConfig
from playlistai.tracking import close_if_abandoned, files_hash, stage_run
from playlistai.training.curves import plot_training_curves
from playlistai.training.loop import TrainConfig
from playlistai.training.neighbour_mix import NeighbourMix, mix_neighbours
from playlistai.training.worker import BEST_DIR, find_state_dirs, peak_rss_mb, train_worker

TRAINERS = ("ray", "local")
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
STATE_PATH_TAG = "train_state_path"
FINAL_DIR = "checkpoint"          # under the run's storage directory: the checkpoint it logs


@dataclass
class TrainParams:
    """The `train` entry point's params (MLproject), with the defaults `make demo` relies on."""

    model: str = "sasrec"
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    max_seq_len: int = 50
    epochs: int = 200
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    loss: str = "auto"
    num_negatives: int = 2048
    label_smoothing: float = 0.1
    ce_chunk_mb: float = 256.0
    precision: str = "auto"
    max_minutes: float = 0.0
    anneal_to_budget: bool = True
    epoch_windows: int = 0
    use_context: bool = True
    cosine_scale: float = 16.0
    num_workers: int = 2
    trainer: str = "ray"
    seed: int = 42
    patience: int = 2
    plateau_lr_factor: float = 0.5
    data_dir: str = "data"
    resume_from: str = ""
    val_max_cases: int = 5000
    val_exclude_seen: bool = True
    fit_repeat_bonus: bool = True
    neighbour_mix: bool = True
    storage_path: str = "outputs/train"
    progress: bool = True

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides) -> TrainParams:
        settings = settings or get_settings()
        base = dict(
            model=settings.model_family,
            d_model=settings.MODEL_D,
            max_seq_len=settings.MAX_SEQ_LEN,
            label_smoothing=settings.LOSS_LABEL_SMOOTH,
            data_dir=settings.DATA_DIR,
        )
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            family=self.model,
            vocab_size=vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            dropout=self.dropout,
            max_seq_len=self.max_seq_len,
            use_context=self.use_context,
            cosine_scale=self.cosine_scale,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            loss=self.loss,
            num_negatives=self.num_negatives,
            label_smoothing=self.label_smoothing,
            ce_chunk_mb=self.ce_chunk_mb,
            precision=self.precision,
            max_minutes=self.max_minutes,
            anneal_to_budget=self.anneal_to_budget,
            epoch_windows=self.epoch_windows,
            patience=self.patience,
            plateau_lr_factor=self.plateau_lr_factor,
            seed=self.seed,
            val_max_cases=self.val_max_cases,
            val_exclude_seen=self.val_exclude_seen,
            fit_repeat_bonus=self.fit_repeat_bonus,
            progress=self.progress,
        )

    def validate(self) -> None:
        """Raise ValueError naming every bad param; reads nothing but the data directory listing."""
        problems = []
        for check in (lambda: self.model_config(vocab_size=2), lambda: self.train_config().validate()):
            try:
                check()
            except ValueError as exc:
                problems.append(str(exc))
        if self.trainer not in TRAINERS:
            problems.append(f"trainer must be one of {TRAINERS}, got {self.trainer!r}")
        if self.num_workers < 1:
            problems.append(f"num_workers must be >= 1, got {self.num_workers}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if problems:
            raise ValueError("; ".join(problems))
        layout = DataLayout.of(self.data_dir)
        for path in [layout.split(s) for s in SPLITS] + [layout.vocab]:
            layout.require(path, "splits")

    def to_dict(self) -> dict:
        return asdict(self)


def data_files(data_dir: str | Path) -> list[Path]:
    layout = DataLayout.of(data_dir)
    return [layout.split(s) for s in SPLITS] + [layout.vocab]


def absolute_tracking_uri(uri: str) -> str:
    """Ray workers run in another working directory: a relative SQLite path must become absolute."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def resume_run_id(value: str) -> str | None:
    """The MLflow run id `resume_from` names (`<id>` or `runs:/<id>`), or None for a directory."""
    if not value or Path(value).exists():
        return None
    run_id = value[len("runs:/") :].split("/")[0] if value.startswith("runs:/") else value
    return run_id if RUN_ID_RE.match(run_id) else None


def resolve_resume(value: str) -> Path | None:
    """`resume_from` -> the latest state directory it names.

    Accepts a state directory, a run's storage directory (Ray's or the local trainer's), or the
    MLflow run id (`<id>` or `runs:/<id>`) of an earlier training run, whose storage directory is
    its `train_state_path` tag.
    """
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        run_id = value[len("runs:/") :].split("/")[0] if value.startswith("runs:/") else value
        if not RUN_ID_RE.match(run_id):
            raise FileNotFoundError(f"resume_from={value!r}: no such directory, and not an MLflow run id")
        run = mlflow.tracking.MlflowClient().get_run(run_id)
        tagged = run.data.tags.get(STATE_PATH_TAG)
        if not tagged:
            raise FileNotFoundError(f"resume_from={value!r}: run {run_id} has no {STATE_PATH_TAG} tag (not a training run?)")
        path = Path(tagged)
    states = find_state_dirs(path) if path.exists() else []
    if not states:
        raise FileNotFoundError(f"resume_from={value!r}: no saved training state under {path}")
    return states[-1].resolve()


@dataclass
class TrainOutcome:
    run_id: str
    summary: dict
    checkpoint_dir: Path          # the best model (product checkpoint layout)
    state_dir: Path               # the last epoch's resumable state
    wall_seconds: float
    neighbour_mix: NeighbourMix | None = None


def run_train_stage(
    params: TrainParams,
    log_params: dict | None = None,
    settings: Settings | None = None,
) -> TrainOutcome:
    """Validate, train (locally or on Ray), and log everything to the stage's MLflow run.

    `log_params` are the params as the caller received them (MLproject strings): `mlflow run`
    has already logged those, and MLflow refuses a param logged twice with a different spelling.
    """
    params.validate()
    settings = settings or get_settings()
    data_dir = Path(params.data_dir).resolve()
    resume_dir = resolve_resume(params.resume_from) if params.resume_from else None
    vocab = load_vocab(data_dir)
    model_config = params.model_config(vocab.size)
    train_config = params.train_config()
    data_hash = files_hash(data_files(data_dir))
    logged = {f.name: getattr(params, f.name) for f in fields(params) if f.name != "progress"}
    logged.update(log_params or {})
    tags = {"model_family": model_config.family, "data_hash": data_hash, "trainer": params.trainer}

    t0 = time.perf_counter()
    with stage_run("train", logged, tags=tags, settings=settings, run_name=f"train-{model_config.family}") as run:
        run_id = run.info.run_id
        storage = Path(params.storage_path).resolve()
        state_root = storage / run_id
        mlflow.set_tag(STATE_PATH_TAG, str(state_root))
        if resume_dir is not None:
            mlflow.set_tag("resumed_from", str(resume_dir))
        resumed_run = resume_run_id(params.resume_from)
        if resumed_run:
            # the run resumed here was usually killed: if nothing ended it, it would stay RUNNING
            mlflow.set_tag("resumed_from_run", resumed_run)
            close_if_abandoned(mlflow.MlflowClient(), resumed_run, f"training run {run_id} resumed it")
        worker_cfg = {
            "model_config": model_config.to_dict(),
            "train_config": train_config.to_dict(),
            "data_dir": str(data_dir),
            "run_id": run_id,
            "tracking_uri": absolute_tracking_uri(mlflow.get_tracking_uri()),
            "resume_from": str(resume_dir) if resume_dir else None,
            "extra": {"data_hash": data_hash, "mlflow_run_id": run_id},
        }
        if params.trainer == "local":
            summary = train_worker({**worker_cfg, "state_dir": str(state_root)})
            states = find_state_dirs(state_root)
            last_state = states[-1] if states else None
        else:
            from playlistai.training.ray_trainer import run_on_ray

            result = run_on_ray(
                worker_cfg,
                num_workers=params.num_workers,
                storage_path=str(storage),
                name=run_id,
                address=settings.RAY_ADDRESS,
            )
            summary, last_state = result.summary, result.checkpoint_dir
        if last_state is None:  # resumed a run that had already trained every epoch asked for
            last_state = resume_dir
        if last_state is None:
            raise RuntimeError("training finished without saving any state")
        wall = time.perf_counter() - t0

        history = summary.get("history", [])
        best = summary.get("best_metrics", {})
        final = {f"best_{k}": v for k, v in best.items() if k.startswith("val_")}
        final.update(
            best_epoch=summary.get("best_epoch", 0),
            epochs_run=summary.get("epochs_run", 0),
            best_epoch_minutes=summary.get("best_epoch_minutes", 0.0),
            stopped_early=float(bool(summary.get("stopped_early"))),
            train_wall_seconds=wall,
            peak_rss_mb=max(peak_rss_mb(), summary.get("peak_rss_mb", 0.0)),
        )
        # the product checkpoint: the best epoch's, with the neighbours mixed in when they help;
        # the resumable state keeps the best epoch as training left it
        checkpoint_dir = state_root / FINAL_DIR
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        shutil.copytree(last_state / BEST_DIR, checkpoint_dir)
        mix = None
        if params.neighbour_mix:
            mix = mix_neighbours(checkpoint_dir, data_dir, exclude_seen=params.val_exclude_seen,
                                 fit_bonus=params.fit_repeat_bonus, seed=params.seed)
            final.update(mix.metrics())
        mlflow.log_metrics({k: float(v) for k, v in final.items()})
        mlflow.set_tags({k: summary[k] for k in ("stop_reason", "loss", "precision", "device") if k in summary})
        mlflow.log_artifacts(str(checkpoint_dir), artifact_path="checkpoint")
        if history:
            png = plot_training_curves(
                history, state_root / "training_curves.png", title=f"{model_config.family} ({run_id[:8]})"
            )
            mlflow.log_artifact(str(png), artifact_path="plots")
    return TrainOutcome(
        run_id=run_id,
        summary=summary,
        checkpoint_dir=checkpoint_dir,
        state_dir=last_state,
        wall_seconds=wall,
        neighbour_mix=mix,
    )
