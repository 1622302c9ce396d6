"""Training throughput of SASRec and GRU4Rec on `default` data, 1 vs 2 Ray Train workers.

    python bench/bench_train.py [--data-dir data/bench/default] [--models sasrec,gru4rec]
                                [--workers 1,2] [--epochs 1] [--d-model 256]

The data stages run once into --data-dir if it holds no splits. Each (model, workers) pair then
trains `--epochs` epochs with the product defaults (the `train` stage, trainer=ray) against a
throwaway MLflow store, on one local Ray started once (its start-up is not counted). Reported per
pair: training events (next-track targets) per second, seconds per epoch without and with the
per-epoch validation, the last epoch's val_ndcg_at_10, the workers' peak RSS, and wall time per run
(Ray worker start-up included). The load average is printed with the figures: on a shared machine
other jobs slow every number down. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ensure_data(size: str, data_dir: Path) -> None:
    from playlistai.data.stages import ensure_synthetic_dataset

    t0 = time.perf_counter()
    if ensure_synthetic_dataset(data_dir, size):
        print(f"bench-train: built {size} data in {time.perf_counter() - t0:.0f}s -> {data_dir}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(REPO / "data" / "bench" / "default"))
    ap.add_argument("--size", default="default", help="synthetic size built when --data-dir has no splits")
    ap.add_argument("--models", default="sasrec,gru4rec")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=None, help="defaults to MODEL_D")
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()

    store = tempfile.mkdtemp(prefix="bench-train-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    os.environ["MLFLOW_ARTIFACT_ROOT"] = f"{store}/mlartifacts"
    from playlistai.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    data_dir = Path(args.data_dir).resolve()
    ensure_data(args.size, data_dir)

    from playlistai.training.ray_trainer import start_ray
    from playlistai.training.stage import TrainParams, run_train_stage

    workers = [int(w) for w in args.workers.split(",")]
    started = start_ray(settings.RAY_ADDRESS, max(workers))
    results = []
    load_before = os.getloadavg()
    try:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for n in workers:
                overrides = {"d_model": args.d_model, "batch_size": args.batch_size}
                params = TrainParams.from_settings(
                    settings, model=model, epochs=args.epochs, patience=0, trainer="ray", num_workers=n,
                    data_dir=str(data_dir), storage_path=f"{store}/storage", progress=False,
                    **{k: v for k, v in overrides.items() if v is not None},
                )
                t0 = time.perf_counter()
                outcome = run_train_stage(params, settings=settings)
                wall = time.perf_counter() - t0
                hist = outcome.summary["history"]
                row = {
                    "model": model,
                    "workers": n,
                    "d_model": params.d_model,
                    "batch_size": params.batch_size,
                    "epochs": len(hist),
                    "train_events_per_epoch": outcome.summary["train_targets"],
                    "events_per_second": sum(r["train_events_per_second"] for r in hist) / len(hist),
                    "seconds_per_epoch": sum(r["train_seconds"] for r in hist) / len(hist),
                    "seconds_per_epoch_with_val": sum(r["epoch_seconds"] for r in hist) / len(hist),
                    "val_ndcg_at_10": hist[-1]["val_ndcg_at_10"],
                    "peak_rss_mb_rank0": outcome.summary["peak_rss_mb"],
                    "wall_seconds": wall,
                    "load_avg_1m_after": os.getloadavg()[0],
                }
                results.append(row)
                print(
                    f"{model:8s} workers={n}  {row['events_per_second']:8.0f} events/s  "
                    f"{row['seconds_per_epoch']:6.1f} s/epoch ({row['seconds_per_epoch_with_val']:.1f} with val)  "
                    f"val_ndcg_at_10={row['val_ndcg_at_10']:.4f}  rss={row['peak_rss_mb_rank0']:.0f}MB  "
                    f"wall={wall:.0f}s  load={row['load_avg_1m_after']:.1f}",
                    flush=True,
                )
    finally:
        if started:
            import ray

            ray.shutdown()

    speedup = {}
    for model in {r["model"] for r in results}:
        by_n = {r["workers"]: r["events_per_second"] for r in results if r["model"] == model}
        if 1 in by_n and 2 in by_n:
            speedup[model] = by_n[2] / by_n[1]
    summary = {
        "bench": "train",
        "data_dir": str(data_dir),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_avg_before": load_before,
        "results": results,
        "speedup_2_workers": speedup,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
