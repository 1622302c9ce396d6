"""The `train` stage: validated params -> one MLflow run with per-epoch curves, the best
checkpoint (artifact `checkpoint/`) and a training-curve figure (artifact `plots/`).

`plan_training` checks every param before any data is read, any run opened or any worker started,
so a typo fails in a second with a message that names the param; the caller opens the run with the
plan's params, tags and name (`stage_run`), and `run_train_stage` trains into it.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import mlflow

from playlistai.config import Settings, get_settings
from playlistai.data.layout import DataLayout
from playlistai.data.sequences import load_vocab
from playlistai.models import ModelConfig
from playlistai.params import StageParams, in_mlproject, param
from playlistai.tracking import close_if_abandoned, files_hash
from playlistai.training.curves import plot_training_curves
from playlistai.training.loop import TrainConfig
from playlistai.training.neighbour_mix import NeighbourMix, mix_neighbours
from playlistai.training.windows import window_file
from playlistai.training.worker import BEST_DIR, find_state_dirs, peak_rss_mb, train_worker

TRAINERS = ("ray", "local")
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
STATE_PATH_TAG = "train_state_path"
FINAL_DIR = "checkpoint"          # under the run's storage directory: the checkpoint it logs


@dataclass
class TrainParams(StageParams):
    """The `train` entry point's params (MLproject), with the defaults `make demo` relies on."""

    model: str = param("sasrec", "sasrec | gru4rec (transformer = sasrec); defaults to MODEL_NAME",
                       setting="model_family")
    d_model: int = param(128, "defaults to MODEL_D", setting="MODEL_D")
    n_layers: int = param(2)
    n_heads: int = param(2, "SASRec attention heads; must divide d_model")
    dropout: float = param(0.2)
    max_seq_len: int = param(50, "defaults to MAX_SEQ_LEN", setting="MAX_SEQ_LEN")
    epochs: int = param(200, "a cap: runs end by early stopping or max_minutes")
    batch_size: int = param(256, "global batch, split across Ray workers")
    lr: float = param(2e-3)
    weight_decay: float = param(0.01)
    loss: str = param("auto", "auto (by catalog size) | ce (full softmax, chunked) | sampled (sampled softmax, "
                      "log-Q corrected)")
    num_negatives: int = param(2048, "negatives per batch for loss=sampled")
    item_updates: str = param("auto", "auto (sparse from 100k tracks with loss=sampled) | dense | sparse (only "
                              "the item-table rows a step used, lazy Adam)")
    label_smoothing: float = param(0.1, "defaults to LOSS_LABEL_SMOOTH", setting="LOSS_LABEL_SMOOTH")
    ce_chunk_mb: float = param(256.0, "loss=ce: MB of logits held at once (bounds peak memory)")
    precision: str = param("auto", "auto (bf16 where the hardware has it) | bf16 | fp32")
    max_minutes: float = param(0.0, "stop before an epoch that would end past this many minutes; 0 = none")
    anneal_to_budget: bool = param(True, "with max_minutes, decay the lr linearly to 0 as the budget ends")
    epoch_windows: int = param(0, "training windows sampled per epoch (validate that often); 0 = all")
    use_context: bool = param(True, "mix the hour and weekday of the next play in")
    cosine_scale: float = param(16.0, "score by cosine similarity x this; 0 = inner product")
    num_workers: int = param(2, "Ray Train workers")
    trainer: str = param("ray", "ray | local (in-process, no Ray)")
    seed: int = param(42)
    patience: int = param(2, "epochs without val_ndcg_at_10 gain before stopping; 0 = never")
    plateau_lr_factor: float = param(0.5, "lr multiplier after an epoch without val gain; 1 = off")
    data_dir: str = param("data", "defaults to DATA_DIR", setting="DATA_DIR")
    resume_from: str = param("", "state directory, run storage directory or MLflow run id")
    val_max_cases: int = param(5000, "per-epoch validation subset size; 0 = all")
    val_exclude_seen: bool = param(True, "validate without the tracks of the history (false: repeats allowed)")
    fit_repeat_bonus: bool = param(True, "with repeats allowed, fit the repeat bonus on validation")
    neighbour_mix: bool = param(True, "after training, mix session neighbours' votes in when validation gains")
    storage_path: str = param("outputs/train", "where epoch states and Ray checkpoints go")
    progress: bool = param(True, "progress bar per epoch", mlproject=False)

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
            item_updates=self.item_updates,
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
        for path in layout.split_files:
            layout.require(path, "splits")

    def to_dict(self) -> dict:
        return asdict(self)


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


@dataclass
class TrainPlan:
    """What is settled before the training run opens, and what that run is opened with:
    `stage_run("train", plan.run_params, tags=plan.tags, settings=plan.settings, run_name=plan.run_name)`."""

    params: TrainParams
    settings: Settings
    data_dir: Path
    resume_dir: Path | None
    model_config: ModelConfig
    train_config: TrainConfig
    data_hash: str
    run_params: dict
    tags: dict[str, str]
    # train_wall_seconds counts from here, so that it includes opening the run
    started: float = field(default_factory=time.perf_counter)

    @property
    def run_name(self) -> str:
        return f"train-{self.model_config.family}"


def plan_training(
    params: TrainParams,
    log_params: dict | None = None,
    settings: Settings | None = None,
) -> TrainPlan:
    """Validate the params and find the data and the state to resume: a bad value fails here, before
    any run is opened.

    `log_params` are the params as the caller received them (MLproject strings): `mlflow run`
    has already logged those, and MLflow refuses a param logged twice with a different spelling.
    """
    params.validate()
    settings = settings or get_settings()
    data_dir = Path(params.data_dir).resolve()
    resume_dir = resolve_resume(params.resume_from) if params.resume_from else None
    vocab = load_vocab(data_dir)
    model_config = params.model_config(vocab.size)
    data_hash = files_hash(DataLayout.of(data_dir).split_files)
    logged = {f.name: getattr(params, f.name) for f in fields(params) if in_mlproject(f)}
    logged.update(log_params or {})
    return TrainPlan(
        params=params,
        settings=settings,
        data_dir=data_dir,
        resume_dir=resume_dir,
        model_config=model_config,
        train_config=params.train_config(),
        data_hash=data_hash,
        run_params=logged,
        tags={"model_family": model_config.family, "data_hash": data_hash, "trainer": params.trainer},
    )


def run_train_stage(plan: TrainPlan) -> TrainOutcome:
    """Train (locally or on Ray) and log everything to the active MLflow run, which the caller
    opened as `TrainPlan` says."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("run_train_stage logs into the active MLflow run: open it first (TrainPlan)")
    params, settings, data_dir, resume_dir = plan.params, plan.settings, plan.data_dir, plan.resume_dir
    model_config, train_config, data_hash = plan.model_config, plan.train_config, plan.data_hash
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
    windows_dir = window_file(data_dir, model_config.max_seq_len, data_hash)
    worker_cfg = {
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "data_dir": str(data_dir),
        "windows_dir": str(windows_dir),
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
    wall = time.perf_counter() - plan.started

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
    mlflow.set_tags({k: summary[k] for k in ("stop_reason", "loss", "item_updates", "precision", "device")
                     if k in summary})
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
