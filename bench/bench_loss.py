"""The training loss alone: time and peak memory per batch of targets, by catalog size.

    python bench/bench_loss.py [--catalogs 10000,43097,100000,250000,1000000] [--d-model 64]
                               [--targets 1024] [--negatives 512,2048]

Each (loss, catalog) pair runs in a fresh process (its peak RSS is its own): one forward and
backward of a batch of `--targets` next-track targets against an item table of the catalog's size,
timed over a few repetitions after a warm-up. Losses: `unchunked` (one [targets x catalog] logits
matrix, the full softmax before chunking, skipped where it would not fit), `ce` (the chunked exact
full softmax, `ce_chunk_mb` as in the product default) and `sampled` with each negative count.
Where the full softmax costs many times the sampled one per target, an epoch over a large catalog
is out of reach on CPUs and `loss=auto` switches (README "Training"). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNCHUNKED_MAX_BYTES = 6 * 2**30

SNIPPET = r"""
import json, resource, sys, time
import numpy as np, torch, torch.nn.functional as F
from playlistai.training.losses import FullSoftmaxLoss, SampledSoftmaxLoss
loss, catalog, d, n, negatives = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
hidden = torch.randn(n, d, requires_grad=True)
table = (torch.randn(catalog + 1, d) * 0.1).requires_grad_(True)
targets = torch.randint(1, catalog + 1, (n,))
if loss == "unchunked":
    fn = lambda: F.cross_entropy(hidden @ table[1:].T, targets - 1, label_smoothing=0.1)
elif loss == "ce":
    fn = lambda: FullSoftmaxLoss(0.1)(hidden, table, targets)
else:
    counts = np.r_[0, np.random.default_rng(0).zipf(1.3, catalog).clip(max=10**6)].astype(np.float64)
    sampled = SampledSoftmaxLoss(negatives, item_counts=counts)
    fn = lambda: sampled(hidden, table, targets)
def step():
    hidden.grad = table.grad = None
    fn().backward()
step()
reps = 3
t0 = time.perf_counter()
for _ in range(reps):
    step()
ms = (time.perf_counter() - t0) / reps * 1000
print(json.dumps({"ms_per_batch": ms, "targets_per_second": n / ms * 1000,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalogs", default="10000,43097,100000,250000,1000000")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--targets", type=int, default=1024)
    ap.add_argument("--negatives", default="512,2048")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    for catalog in [int(c) for c in args.catalogs.split(",")]:
        runs = [("unchunked", 0), ("ce", 0)] + [("sampled", int(k)) for k in args.negatives.split(",")]
        for loss, k in runs:
            if loss == "unchunked" and 3 * args.targets * catalog * 4 > UNCHUNKED_MAX_BYTES:
                continue
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, "-c", SNIPPET, loss, str(catalog), str(args.d_model),
                                  str(args.targets), str(k)], env=env, capture_output=True, text=True, check=True)
            row = {"catalog": catalog, "loss": loss if not k else f"sampled-{k}", **json.loads(out.stdout),
                   "load_avg_1m": load}
            rows.append(row)
            print(f"catalog {catalog:>9,}  {row['loss']:12s} {row['ms_per_batch']:9.1f} ms/batch  "
                  f"{row['targets_per_second']:9.0f} targets/s  peak RSS {row['peak_rss_mb']:7.0f} MB  load {load:.1f}",
                  flush=True)
    print(json.dumps({"bench": "loss", "date": time.strftime("%Y-%m-%d"), "d_model": args.d_model,
                      "targets": args.targets, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                      "results": rows}))


if __name__ == "__main__":
    main()
