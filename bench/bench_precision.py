"""fp32 against bf16 autocast on one SASRec training step, side by side in one process.

    python bench/bench_precision.py [--threads 1] [--windows 128] [--catalog 43098] [--rounds 6]

The step is the product's (tied item table, cosine scores, sampled softmax with 2,048 log-Q
corrected negatives, AdamW) at DIGINETICA's scale by default, with windows of 4-32 tracks as
length bucketing produces them. The two precisions alternate `--rounds` times and the medians are
compared, so the machine's load moves both alike. `--windows 128` with one thread is one Ray
worker's share of the default 256-window batch. Prints one line with both times, the ratio and
the 1-minute load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import numpy as np
import torch

from playlistai.models import ModelConfig, build_model
from playlistai.training.losses import make_loss
from playlistai.training.worker import bound_kernel_caches

WINDOW_LENGTHS = (4, 8, 16, 32, 8, 4, 12, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--catalog", type=int, default=43_098)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    bound_kernel_caches()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = args.catalog
    model = build_model(ModelConfig(family="sasrec", vocab_size=vocab, d_model=128, n_layers=2, n_heads=2,
                                    dropout=0.2, max_seq_len=50, cosine_scale=16.0))
    counts = np.random.default_rng(0).zipf(1.3, vocab).astype(float)
    counts[0] = 0
    loss_fn = make_loss("sampled", num_negatives=2048, item_counts=counts, vocab_size=vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(bf16: bool, length: int) -> None:
        shape = (args.windows, length)
        ids, targets = torch.randint(1, vocab, shape), torch.randint(1, vocab, shape)
        hours, dows = torch.randint(0, 24, shape), torch.randint(0, 7, shape)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(model(ids, hours, dows), model.item_embeddings(), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            step(bf16, 8)                                   # warm the kernels of this precision
            start = time.perf_counter()
            for length in WINDOW_LENGTHS:
                step(bf16, length)
            seconds[bf16].append((time.perf_counter() - start) / len(WINDOW_LENGTHS))
    fp32, bf16 = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"threads {args.threads}, {args.windows} windows, catalog {vocab:,}: fp32 {fp32 * 1000:.1f} ms/step, "
          f"bf16 {bf16 * 1000:.1f} ms/step, bf16 speed-up {fp32 / bf16:.2f}x, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
