"""Evaluation throughput (cases/s) on `default` and `large`, and peak memory on `large`.

    python bench/bench_eval.py [--sizes default,large] [--data-root data/bench] [--max-cases 5000]

For each size the data stages run once into `data-root/<size>` (kept for later runs), then a fresh
process per size ranks the test split's next-track cases against the whole catalog, both
exclude_seen settings from one scoring pass (what `evaluate` does), for:

- `sasrec`: an untrained SASRec of the product's default shape (MODEL_D, 2 layers): the
  model-scoring path; its quality is irrelevant here, its cost is not;
- `mostpop`: trivial scores, so its rate is the evaluator's own overhead (ranking, top-k, copies);
- `transitions` and `sknn`: the sparse baselines.

Peak memory is the process's maximum RSS after everything ran, next to the size a cases x catalog
score matrix would take (which the evaluator never builds). The last line printed is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ensure_data(size: str, data_dir: Path) -> None:
    """Run data -> preprocess -> splits once, logging to a throwaway MLflow store."""
    from playlistai.data.layout import DataLayout

    if DataLayout.of(data_dir).vocab.exists():
        return
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        os.environ["MLFLOW_ARTIFACT_ROOT"] = f"{store}/mlartifacts"
        from playlistai.config import get_settings
        from playlistai.data.stages import ensure_synthetic_dataset

        get_settings.cache_clear()
        t0 = time.perf_counter()
        ensure_synthetic_dataset(data_dir, size)
        print(f"bench-eval: built {size} data in {time.perf_counter() - t0:.0f}s -> {data_dir}", file=sys.stderr)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def measure(size: str, data_dir: Path, max_cases: int, batch_size: int) -> dict:
    """One size in this process: cases/s per scorer and the peak RSS."""
    import numpy as np
    import torch

    from playlistai.config import get_settings
    from playlistai.data.sequences import encode_sessions, load_split, load_vocab, next_track_cases
    from playlistai.evaluation.evaluator import rank_next_track
    from playlistai.models import ModelConfig, build_model
    from playlistai.models.baselines import fit_baselines

    torch.manual_seed(0)
    vocab = load_vocab(data_dir)
    cases = next_track_cases(encode_sessions(load_split(data_dir, "test"), vocab), 50)
    total_cases = len(cases)
    if len(cases) > max_cases:
        # whole sessions from the start of the split: the case mix of a real evaluation
        cases = cases.subset(np.arange(len(cases)) < max_cases)
    train = encode_sessions(load_split(data_dir, "train"), vocab)
    rss_data = peak_rss_mib()

    t0 = time.perf_counter()
    baselines = fit_baselines(train, vocab.size, ["mostpop", "transitions", "sknn"])
    fit_seconds = time.perf_counter() - t0
    model = build_model(ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=get_settings().MODEL_D,
                                    n_layers=2, n_heads=2, max_seq_len=50)).eval()
    scorers = {"sasrec": model, **baselines}

    rates, cpu_rates = {}, {}
    for name, scorer in scorers.items():
        t0, c0 = time.perf_counter(), time.process_time()
        rank_next_track(scorer, cases, exclude_seen_settings=(True, False), batch_size=batch_size)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        rates[name] = round(len(cases) / seconds, 1)
        # per CPU-second of this process: on a shared machine, less sensitive to other load
        cpu_rates[name] = round(len(cases) / max(cpu_seconds, 1e-9), 1)
        print(f"bench-eval: {size:<8} {name:<12} {len(cases)} cases in {seconds:6.1f}s = {rates[name]:8.0f} cases/s "
              f"({cpu_rates[name]:.0f} per CPU-s)", file=sys.stderr)
    full_matrix_mib = total_cases * vocab.size * 4 / 2**20
    return {
        "catalog": vocab.size - 1,
        "test_cases": total_cases,
        "cases_measured": len(cases),
        "train_sessions": len(train),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "baseline_fit_s": round(fit_seconds, 2),
        "cases_per_s": rates,
        "cases_per_cpu_s": cpu_rates,
        "load_avg_1min": round(os.getloadavg()[0], 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_loading_data_mib": round(rss_data, 1),
        "batch_scores_mib": round(batch_size * vocab.size * 4 / 2**20, 1),
        "full_cases_x_catalog_matrix_mib": round(full_matrix_mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="default,large")
    parser.add_argument("--data-root", default=str(REPO / "data" / "bench"))
    parser.add_argument("--max-cases", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--one", help=argparse.SUPPRESS)      # internal: measure one size in this process
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args.one, Path(args.data_root) / args.one, args.max_cases, args.batch_size)))
        return

    results = {}
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        data_dir = Path(args.data_root) / size
        ensure_data(size, data_dir)
        # a fresh process per size, so the peak RSS is that size's alone
        proc = subprocess.run(
            [sys.executable, __file__, "--one", size, "--data-root", args.data_root,
             "--max-cases", str(args.max_cases), "--batch-size", str(args.batch_size)],
            stdout=subprocess.PIPE, text=True, check=True,
        )
        results[size] = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = {
        "bench": "eval",
        "machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.python_version()}",
        **results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
