"""A training step by catalog size: dense AdamW over the item table against sparse (lazy Adam) updates.

    python bench/bench_item_updates.py [--catalogs 43097,234260,898593] [--batch 128] [--steps 6]

One process, one thread per torch op as a 2-core worker runs, the product's own step
(training/loop.py `_LossStep`, training/optim.py `ModelOptimizer`): SASRec of the default shape
(d_model 128, 2 layers, 50 positions, cosine scores), the sampled loss with 2,048 negatives, bf16
autocast where the CPU has it, a batch of `--batch` windows (one of two Ray workers' share of the
global 256) drawn from a Zipf popularity. Three ways, taking turns step by step so that a change of
load slows them alike:

- `before`: what the loop did before: the loss gets the whole normalised table, dense AdamW;
- `dense`: the loss gathers and normalises only its rows, dense AdamW (`item_updates=dense`);
- `sparse`: the same, with the table's gradient sparse and lazy Adam on it (`item_updates=sparse`).

A single process has no all-reduce: under DDP a dense step also all-reduces a gradient the size of
the table, so these ratios understate what two workers gain. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WAYS = ("before", "dense", "sparse")


def build(way: str, catalog: int, counts):
    import torch

    from playlistai.models import ModelConfig, build_model
    from playlistai.training.loop import _LossStep
    from playlistai.training.losses import SampledSoftmaxLoss
    from playlistai.training.optim import ModelOptimizer

    torch.manual_seed(0)
    model = build_model(ModelConfig(family="sasrec", vocab_size=catalog + 1, d_model=128, n_layers=2, n_heads=2,
                                    dropout=0.2, max_seq_len=50, cosine_scale=16.0))
    model.train()
    model.item_emb.sparse = way == "sparse"
    loss_fn = SampledSoftmaxLoss(2048, item_counts=counts)
    optimizer = ModelOptimizer(list(model.parameters()), 2e-3, 0.01, lambda step: 1.0,
                               item_table=model.item_emb.weight if way == "sparse" else None)
    step_module = _LossStep(model, loss_fn)

    def loss(input_ids, target_ids, hours, dows):
        if way == "before":
            return loss_fn(model(input_ids, hours, dows), model.item_embeddings(), target_ids)
        return step_module(input_ids, target_ids, hours, dows)

    return loss, optimizer


def bench_catalog(catalog: int, batch: int, steps: int) -> dict:
    import numpy as np
    import torch

    from playlistai.training.precision import autocast_dtype

    rng = np.random.default_rng(0)
    counts = np.r_[0.0, np.sort(rng.zipf(1.2, catalog).clip(max=10**6).astype(np.float64))[::-1]]
    p = counts / counts.sum()
    amp = autocast_dtype("auto", torch.device("cpu"))
    ways = {way: build(way, catalog, counts) for way in WAYS}
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for step in range(steps + 1):                       # step 0 is the warm-up (optimizer state, kernels)
        ids = torch.from_numpy(rng.choice(len(p), size=(batch, 51), p=p)).long()
        hours = torch.from_numpy(rng.integers(0, 24, (batch, 50))).long()
        dows = torch.from_numpy(rng.integers(0, 7, (batch, 50))).long()
        for way, (loss, optimizer) in ways.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                value = loss(ids[:, :-1], ids[:, 1:], hours, dows)
            optimizer.zero_grad()
            value.backward()
            optimizer.step(grad_clip=1.0)
            if step:
                times[way].append(time.perf_counter() - t0)
    row = {"catalog": catalog, "parameters_m": round(sum(p.numel() for p in ways["dense"][1].params) / 1e6, 1)}
    for way in WAYS:
        row[f"{way}_ms"] = round(statistics.median(times[way]) * 1000, 1)
    row["before_over_sparse"] = round(row["before_ms"] / row["sparse_ms"], 1)
    row["dense_over_sparse"] = round(row["dense_ms"] / row["sparse_ms"], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogs", default="43097,234260,898593")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for catalog in (int(c) for c in args.catalogs.split(",")):
        row = bench_catalog(catalog, args.batch, args.steps)
        rows.append(row)
        print(f"{row['catalog']:>9,} tracks ({row['parameters_m']}M parameters): before {row['before_ms']} ms, "
              f"dense {row['dense_ms']} ms, sparse {row['sparse_ms']} ms "
              f"({row['before_over_sparse']}x / {row['dense_over_sparse']}x)", file=sys.stderr)
    print(json.dumps({"bench": "item_updates", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                      "load_average": os.getloadavg()[0], "batch": args.batch, "rows": rows}))


if __name__ == "__main__":
    main()
