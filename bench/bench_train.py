"""Training throughput and memory, old code against new, side by side in one run.

    python bench/bench_train.py [--datasets default,diginetica,large] [--old-ref <git ref>]
                                [--models sasrec] [--workers 2] [--targets default=60000,...]
                                [--epoch-windows N]

Per dataset the benchmark trains one epoch of each model with the *product defaults* of each code
version (the `train` stage, trainer=ray, `--workers` Ray Train workers on one local Ray) on a
sample of the training sessions, so that the old code's full softmax on a large catalog finishes
in minutes: the catalog (the vocabulary), and so the cost per target, is the dataset's own.
`--targets large=0` trains on the whole training split instead, and `--epoch-windows` caps the
windows of the epoch: how a worker's memory grows with the training data, at a bounded cost.

- `default`, `large`: the synthetic presets, built under --data-root when absent.
- `diginetica`: the splits `make realdata-prepare` writes (--diginetica-dir).

The old code runs from a git worktree of --old-ref (default: the commit before the training work,
see BENCHMARKS.md); both versions run alternately in fresh processes against throwaway MLflow
stores. Reported per row: training events (next-track targets) per second, the Ray workers' peak
RSS (rank 0), the loss and precision the defaults picked, and the 1-minute load average. The last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_OLD_REF = "8dd00d0"
DEFAULT_TARGETS = {"default": 60_000, "diginetica": 40_000, "large": 12_000}
VAL_SESSIONS = 500

# runs inside the code version under test (cwd and PYTHONPATH = its tree); prints one JSON line
WORKER_SNIPPET = r"""
import json, sys
from playlistai.config import get_settings
from playlistai.training import stage as S
from playlistai.training.stage import TrainParams, run_train_stage
args = json.loads(sys.argv[1])
settings = get_settings()
params = TrainParams.from_settings(settings, model=args["model"], epochs=1, patience=0, trainer="ray",
    num_workers=args["workers"], data_dir=args["data_dir"], storage_path=args["storage"], progress=False,
    val_max_cases=200, epoch_windows=args["epoch_windows"])
if hasattr(S, "plan_training"):   # the caller opens the run; older code opened it in run_train_stage
    from playlistai.tracking import stage_run
    plan = S.plan_training(params, settings=settings)
    with stage_run("train", plan.run_params, tags=plan.tags, settings=settings, run_name=plan.run_name):
        out = run_train_stage(plan)
else:
    out = run_train_stage(params, settings=settings)
s = out.summary
print("BENCH " + json.dumps({"events_per_second": s["history"][0]["train_events_per_second"],
    "train_seconds": s["history"][0]["train_seconds"], "targets": s["train_targets"],
    "windows": s["train_windows"],
    "peak_rss_mb_worker": s["peak_rss_mb"], "loss": s.get("loss", params.loss),
    "precision": s.get("precision", "fp32"), "d_model": params.d_model, "wall_seconds": out.wall_seconds}))
"""


def ensure_dataset(name: str, data_root: Path, diginetica_dir: Path) -> Path:
    if name == "diginetica":
        from playlistai.data.layout import DataLayout

        if not DataLayout.of(diginetica_dir).vocab.exists():
            sys.exit(f"bench-train: no DIGINETICA splits in {diginetica_dir}; run `make realdata-prepare` first")
        return diginetica_dir
    from playlistai.data.stages import ensure_synthetic_dataset

    data_dir = data_root / name
    t0 = time.perf_counter()
    if ensure_synthetic_dataset(data_dir, name):
        print(f"bench-train: built {name} data in {time.perf_counter() - t0:.0f}s -> {data_dir}", file=sys.stderr)
    return data_dir


def sample_splits(source: Path, target: Path, train_targets: int, seed: int = 0) -> dict:
    """A copy of `source`'s splits whose training split is a random sample of whole sessions with
    about `train_targets` next-track targets (0: the whole split), and a small validation split;
    same vocabulary."""
    import numpy as np
    import pandas as pd

    from playlistai.data.layout import DataLayout

    src, dst = DataLayout.of(source), DataLayout.of(target)
    dst.splits_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.vocab, dst.vocab)
    shutil.copy(src.split("test"), dst.split("test"))
    rng = np.random.default_rng(seed)
    if train_targets:
        train = pd.read_parquet(src.split("train"))
        per_session = train.groupby("session_id")["is_target"].sum()
        order = rng.permutation(per_session.index.to_numpy())
        keep = order[: int(np.searchsorted(per_session.loc[order].cumsum().to_numpy(), train_targets)) + 1]
        train[train["session_id"].isin(keep)].to_parquet(dst.split("train"))
        sessions = len(keep)
    else:
        shutil.copy(src.split("train"), dst.split("train"))
        sessions = pd.read_parquet(dst.split("train"), columns=["session_id"])["session_id"].nunique()
    val = pd.read_parquet(src.split("val"))
    val_ids = rng.permutation(val["session_id"].unique())[:VAL_SESSIONS]
    val[val["session_id"].isin(val_ids)].to_parquet(dst.split("val"))
    vocab_rows = len(pd.read_parquet(src.vocab))
    return {"catalog": vocab_rows, "train_sessions": sessions}


def run_version(tree: Path, args: dict, store: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
           "MLFLOW_ARTIFACT_ROOT": f"{store}/mlartifacts", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run([sys.executable, "-c", WORKER_SNIPPET, json.dumps(args)], cwd=tree, env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"training in {tree} failed ({proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("BENCH "):])


def old_tree(ref: str, root: Path) -> Path:
    path = root / "old"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="default,diginetica,large")
    ap.add_argument("--models", default="sasrec")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--old-ref", default=DEFAULT_OLD_REF, help="git ref of the old code ('' = new only)")
    ap.add_argument("--targets", default="", help="per dataset, e.g. default=60000,large=12000 (0: whole split)")
    ap.add_argument("--epoch-windows", type=int, default=0, help="windows trained per epoch (0: all)")
    ap.add_argument("--data-root", default=str(REPO / "data" / "bench"))
    ap.add_argument("--diginetica-dir", default=str(REPO / "data" / "diginetica"))
    args = ap.parse_args()

    targets = dict(DEFAULT_TARGETS)
    for item in filter(None, args.targets.split(",")):
        name, value = item.split("=")
        targets[name] = int(value)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    versions = {"new": REPO}
    if args.old_ref:
        versions = {"old": old_tree(args.old_ref, work), **versions}
    results = []
    try:
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            source = ensure_dataset(name, Path(args.data_root), Path(args.diginetica_dir))
            sample = work / "data" / name
            info = sample_splits(source, sample, targets.get(name, 40_000))
            for model in [m.strip() for m in args.models.split(",") if m.strip()]:
                for version, tree in versions.items():
                    store = work / "stores" / f"{name}-{model}-{version}"
                    store.mkdir(parents=True)
                    load = os.getloadavg()[0]
                    try:
                        row = run_version(tree, {"model": model, "workers": args.workers, "data_dir": str(sample),
                                                 "storage": str(store / "storage"),
                                                 "epoch_windows": args.epoch_windows}, store)
                    except RuntimeError as exc:
                        # the old code's full softmax does not fit a large catalog: a result, not a crash
                        last = str(exc).splitlines()[-1][:200]
                        results.append({"dataset": name, "model": model, "version": version, "failed": last,
                                        "catalog": info["catalog"], "load_avg_1m_before": load})
                        print(f"{name:10s} {model:8s} {version:3s} FAILED: {last}", flush=True)
                        continue
                    row.update(dataset=name, model=model, version=version, workers=args.workers,
                               catalog=info["catalog"], train_sessions=info["train_sessions"],
                               epoch_windows=args.epoch_windows, load_avg_1m_before=load)
                    results.append(row)
                    print(f"{name:10s} {model:8s} {version:3s} {row['events_per_second']:8.0f} events/s  "
                          f"rss/worker={row['peak_rss_mb_worker']:6.0f}MB  loss={row['loss']} d={row['d_model']} "
                          f"{row['precision']}  windows={row['windows']:,}  wall={row['wall_seconds']:.0f}s  "
                          f"load={load:.1f}", flush=True)
    finally:
        if args.old_ref:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "old")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    ratios = {}
    for r in results:
        if r["version"] == "new" and "failed" not in r:
            old = next((o for o in results if o["version"] == "old" and o["dataset"] == r["dataset"]
                        and o["model"] == r["model"] and "failed" not in o), None)
            if old:
                ratios[f"{r['dataset']}/{r['model']}"] = {
                    "events_per_second_new_over_old": r["events_per_second"] / old["events_per_second"],
                    "peak_rss_new_over_old": r["peak_rss_mb_worker"] / old["peak_rss_mb_worker"],
                }
    print(json.dumps({
        "bench": "train", "date": time.strftime("%Y-%m-%d"), "old_ref": args.old_ref,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results, "ratios": ratios,
    }))


if __name__ == "__main__":
    main()
