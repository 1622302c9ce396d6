"""ANN against exact scoring on a trained model, in-process (`make bench-ann`).

    python bench/bench_ann.py --checkpoint runs:/<train run>/checkpoint --data-dir data/diginetica
        [--index-types hnsw,ivf,ivfpq] [--targets 0.95,0.98] [--requests 1000]

For each index type and tuning target, the checkpoint is packaged as `register` packages it (the
FAISS index built on the trained item table, its search breadth tuned on validation queries until
FAISS's own top 20 overlaps the exact top 20 by the target), then the Recommender answers the same
test histories (k=20, one at a time, one thread, as an API worker does) three ways, taking turns
request by request so that the machine's noise falls on all of them alike:
- exact: the query against the whole item table;
- ANN, 500 candidates: what every ANN request asked FAISS for while the candidate count was
  CAND_TOPK (500), which forced HNSW's `ef_search` to at least 500;
- ANN, auto: the candidate count the product uses now (2k).
Times are the whole `recommend` call (forward pass, neighbours' votes, scoring, top-k). Overlap is
each ANN answer's top 20 against the exact answer's. Prints a Markdown table with the machine,
the date and the load average, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_startup import cpu_model  # noqa: E402  (after the path)

MODES = {"exact": None, "ann_500": 500, "ann_auto": 0}


def log(message: str) -> None:
    print(f"bench-ann: {message}", file=sys.stderr, flush=True)


def local_checkpoint(uri: str) -> Path:
    if Path(uri).is_dir():
        return Path(uri)
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(uri))


def test_requests(recommender, data_dir: Path, n: int, seed: int = 0) -> list[tuple]:
    from playlistai.data.sequences import encode_sessions, load_split, next_track_cases

    vocab = recommender.vocab
    cases = next_track_cases(encode_sessions(load_split(data_dir, "test"), vocab), recommender.max_seq_len)
    rows = np.random.default_rng(seed).permutation(len(cases))[:n]
    return [(vocab.decode(cases.histories[r][cases.histories[r] > 0]), int(cases.hours[r]), int(cases.dows[r]))
            for r in rows]


def measure(recommender, requests: list[tuple]) -> dict:
    for tracks, hour, dow in requests[:20]:                      # warm-up: lazily built state
        for candidates in MODES.values():
            recommender.recommend(tracks, 20, hour, dow, use_ann=candidates is not None,
                                  ann_candidates=candidates or 0)
    times = {mode: [] for mode in MODES}
    answers = {mode: [] for mode in MODES}
    for tracks, hour, dow in requests:
        for mode, candidates in MODES.items():
            started = time.perf_counter()
            result = recommender.recommend(tracks, 20, hour, dow, use_ann=candidates is not None,
                                           ann_candidates=candidates or 0)
            times[mode].append((time.perf_counter() - started) * 1000)
            answers[mode].append({t for t, _ in result.items})
    out = {}
    for mode in MODES:
        overlap = np.mean([len(a & e) / max(len(e), 1) for a, e in zip(answers[mode], answers["exact"], strict=True)])
        out[mode] = {"p50_ms": float(np.median(times[mode])), "p99_ms": float(np.percentile(times[mode], 99)),
                     "overlap": float(overlap)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder or runs:/<id>/checkpoint")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--index-types", default="hnsw,ivf,ivfpq")
    parser.add_argument("--targets", default="0.95,0.98", help="tuning targets of FAISS's raw top-20 overlap")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()

    from playlistai.inference import Recommender
    from playlistai.registry.packaging import build_package

    checkpoint, data_dir = local_checkpoint(args.checkpoint), Path(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ann-") as tmp:
        for index_type in args.index_types.split(","):
            for target in (float(t) for t in args.targets.split(",")):
                package = Path(tmp) / f"{index_type}-{target}"
                started = time.perf_counter()
                summary = build_package(checkpoint, data_dir, package, ann_index=index_type, target_overlap=target)
                build_s = time.perf_counter() - started
                recommender = Recommender.from_directory(package, num_threads=1)
                requests = test_requests(recommender, data_dir, args.requests)
                log(f"{index_type} target {target}: packaged in {build_s:.0f} s, {len(requests)} requests")
                params = summary["ann"]
                breadth = (f"ef_search {params.hnsw_ef_search}" if params.index_type == "hnsw"
                           else f"nlist {params.ivf_nlist}, nprobe {params.ivf_nprobe}")
                rows.append({"index": index_type, "target": target, "breadth": breadth,
                             "raw_overlap_at_20": params.overlap_at_20, "catalog": summary["catalog_size"],
                             "build_s": round(build_s, 1), **measure(recommender, requests)})
    load = os.getloadavg()
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load[0]:.1f} / {load[1]:.1f}; "
          f"catalog {rows[0]['catalog']:,} tracks; {args.requests} test requests, k=20, one thread\n")
    print("| index | tuned to | search breadth | FAISS raw top-20 overlap | exact p50 / p99 ms "
          "| ANN 500 cand. p50 / p99 ms | overlap | x exact | ANN auto (2k) p50 / p99 ms | overlap | x exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, a5, aa = r["exact"], r["ann_500"], r["ann_auto"]
        print(f"| {r['index']} | {r['target']} | {r['breadth']} | {r['raw_overlap_at_20']:.3f} "
              f"| {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {a5['p50_ms']:.2f} / {a5['p99_ms']:.2f} | {a5['overlap']:.3f} "
              f"| {e['p50_ms'] / a5['p50_ms']:.2f} | {aa['p50_ms']:.2f} / {aa['p99_ms']:.2f} | {aa['overlap']:.3f} "
              f"| {e['p50_ms'] / aa['p50_ms']:.2f} |")
    print(json.dumps({"rows": rows, "load": load}))


if __name__ == "__main__":
    main()
