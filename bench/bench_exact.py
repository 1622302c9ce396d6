"""Exact scoring by the item table's dtype (float32, bfloat16) and layout (rows [V, D], columns
[D, V]) (`make bench-exact`), in-process.

    python bench/bench_exact.py [--rows 6000,140000,1000000] [--dims 64,128,256] [--calls 300] [--threads 1]

What is timed is the exact path's scoring of one request (playlistai/inference/item_table.py, the
product's own class): the matrix product of one query with the item table, float32 scores, PAD
masked, the top 20. The variants run call by call in turn, on the same queries, so that a machine
whose load changes during the run slows them alike; compare the ratios of one run, not the
milliseconds of different runs.

- fp32 rows / fp32 columns: the float32 table (the default ITEM_TABLE_DTYPE) as [V, D] or [D, V];
- bf16 rows / bf16 columns: ITEM_TABLE_DTYPE=bfloat16: the product in bfloat16, its [1, V] result
  made float32 (the repeat bonus, votes and masks are added in float32);
- auto: which layout the product's `ItemTable(layout="auto")` chose for each dtype, timing both
  when the table was built (what a serving process does at load).

The tables are random but shaped like a trained cosine model's (the train stage's default,
cosine_scale 16): unit rows grouped in clusters of ~50 tracks (an artist, a genre), queries of
norm 16 pointing at the mean of 5 tracks of one cluster plus noise, as a history does. The top-20
overlap of bfloat16 with float32 is measured on those queries.

Prints a Markdown table, then one line of JSON with every figure (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from playlistai.inference.item_table import ItemTable  # noqa: E402  (after the path)

K = 20
COSINE_SCALE = 16.0          # the train stage's default
CLUSTER_SIZE = 50
HISTORY = 5
VARIANTS = ("fp32 rows", "fp32 columns", "bf16 rows", "bf16 columns")


def log(message: str) -> None:
    print(f"bench-exact: {message}", file=sys.stderr, flush=True)


def item_table(rows: int, dims: int, generator: torch.Generator) -> torch.Tensor:
    """Unit vectors [rows, dims] in clusters of CLUSTER_SIZE; row 0 is PAD, as in the product."""
    centres = torch.randn(rows // CLUSTER_SIZE + 1, dims, generator=generator)
    cluster = torch.arange(rows) // CLUSTER_SIZE
    items = centres[cluster]
    items += torch.randn(rows, dims, generator=generator) * 0.8      # tracks of a cluster are alike, not equal
    items = torch.nn.functional.normalize(items, dim=-1)
    items[0] = 0.0
    return items


def queries(items: torch.Tensor, calls: int, generator: torch.Generator) -> torch.Tensor:
    """[calls, dims] query vectors of norm COSINE_SCALE: the mean of HISTORY tracks of one cluster, plus noise."""
    rows, dims = items.shape
    clusters = torch.randint(1, rows // CLUSTER_SIZE, (calls,), generator=generator)
    picks = clusters[:, None] * CLUSTER_SIZE + torch.randint(0, CLUSTER_SIZE, (calls, HISTORY), generator=generator)
    direction = items[picks].mean(dim=1) + torch.randn(calls, dims, generator=generator) * 0.05
    return torch.nn.functional.normalize(direction, dim=-1) * COSINE_SCALE


def top_k(scores: torch.Tensor) -> torch.Tensor:
    scores[:, 0] = float("-inf")
    return torch.topk(scores, K, dim=1).indices[0]


def measure(rows: int, dims: int, calls: int, warmup: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    items = item_table(rows, dims, generator)
    asked = queries(items, calls + warmup, generator)
    chosen = {dtype: ItemTable(items, dtype).layout for dtype in ("float32", "bfloat16")}
    tables = {f"{short} {layout}": ItemTable(items, dtype, layout)
              for short, dtype in (("fp32", "float32"), ("bf16", "bfloat16")) for layout in ("rows", "columns")}
    del items
    scorers = {name: (lambda q, table=table: top_k(table.scores(q))) for name, table in tables.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    tops: dict[str, list[set[int]]] = {name: [] for name in VARIANTS}
    with torch.inference_mode():
        for call in range(calls + warmup):
            query = asked[call : call + 1]
            for name in VARIANTS:
                started = time.perf_counter()
                top = scorers[name](query)
                elapsed = (time.perf_counter() - started) * 1000.0
                if call >= warmup:
                    times[name].append(elapsed)
                    tops[name].append(set(top.tolist()))
    overlap = [len(a & b) / K for a, b in zip(tops["fp32 rows"], tops["bf16 rows"], strict=True)]
    result = {"rows": rows, "dims": dims, "calls": calls, "auto": chosen,
              "mb": {name: len(t) * dims * t.weights.element_size() / 2**20 for name, t in tables.items()},
              "overlap_mean": statistics.fmean(overlap), "overlap_min": min(overlap)}
    for name in VARIANTS:
        ordered = sorted(times[name])
        result[name] = {"p50_ms": statistics.median(ordered), "p90_ms": ordered[int(0.9 * (len(ordered) - 1))]}
    fastest = {short: min(result[f"{short} rows"]["p50_ms"], result[f"{short} columns"]["p50_ms"])
               for short in ("fp32", "bf16")}
    result["fp32_rows_over_fastest"] = result["fp32 rows"]["p50_ms"] / min(fastest.values())
    return result


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:             # no lscpu (not Linux): the CPU as Python names it
        lscpu = ""
    model = re.search(r"Model name:\s*(.+)", lscpu)
    flags = re.search(r"Flags:\s*(.+)", lscpu)
    flags = set(flags.group(1).split()) if flags else set()
    return {"cpu": model.group(1).strip() if model else platform.processor(),
            "bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def table(results: list[dict]) -> str:
    lines = ["| rows x dims | table MB fp32 / bf16 | " + " | ".join(f"{v} p50 (p90) ms" for v in VARIANTS)
             + " | auto chose (fp32, bf16) | fp32 rows / fastest | bf16 top-20 overlap, mean (min) |",
             "| --- | --- | " + " | ".join("---" for _ in VARIANTS) + " | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| {r['rows']:,} x {r['dims']} | {r['mb']['fp32 rows']:,.0f} / {r['mb']['bf16 rows']:,.0f} | "
            + " | ".join(f"{r[v]['p50_ms']:.3f} ({r[v]['p90_ms']:.3f})" for v in VARIANTS)
            + f" | {r['auto']['float32']}, {r['auto']['bfloat16']} | {r['fp32_rows_over_fastest']:.2f}x "
            f"| {r['overlap_mean']:.3f} ({r['overlap_min']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="6000,140000,1000000", help="catalog sizes")
    parser.add_argument("--dims", default="64,128,256", help="embedding sizes")
    parser.add_argument("--calls", type=int, default=300, help="measured calls per variant and size")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the API's TORCH_THREADS default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    results = []
    for rows in (int(x) for x in args.rows.split(",")):
        for dims in (int(x) for x in args.dims.split(",")):
            log(f"{rows:,} x {dims}: {args.calls} calls per variant")
            results.append(measure(rows, dims, args.calls, args.warmup, args.seed))
    load_after = os.getloadavg()
    info = {**machine(), "date": started_at, "load_average_start": load_before, "load_average_end": load_after}
    print(f"{info['cpu']} ({', '.join(info['bf16_instructions']) or 'no bf16 instructions'}), {info['cores']} cores, "
          f"torch {info['torch']}, {info['threads']} thread(s); {started_at}; load average (1, 5, 15 min) "
          f"{' '.join(f'{x:.2f}' for x in load_before)} at the start, {' '.join(f'{x:.2f}' for x in load_after)} at the end")
    print()
    print(table(results))
    print(json.dumps({"machine": info, "results": results}))


if __name__ == "__main__":
    main()
