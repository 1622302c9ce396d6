"""Latency and throughput of the HTTP API (`make bench-serve`).

    python bench/bench_serve.py [--sizes default[,large]] [--duration 10] [--clients 1,8] [--workers 1,2]
        [--checkpoints large=runs:/<train run>/checkpoint[,default=...]]

For each catalog size:
1. The data stages run once into `data-root/<size>` (kept for later runs).
2. The production model: the trained checkpoint `--checkpoints` names for that size, or else an
   untrained SASRec of the product's default shape (MODEL_D, 2 layers, MAX_SEQ_LEN; fine for HTTP
   latency, not for judging an ANN index, whose recall depends on the trained geometry), packaged
   with its FAISS index as `register` packages it, registered in a throw-away MLflow store as
   `playlistai@production`. `--model-uri` serves an existing model instead.
3. A Redis of its own (own port, no persistence) and, for each `--workers` count, the API as
   `make api` runs it (gunicorn with the edge's uvicorn workers, WEB_CONCURRENCY of them, metrics
   summed through PROMETHEUS_MULTIPROC_DIR); it loads the alias like in production. One worker is
   what `make api` ran before it started one worker per core. After the runs, each worker's RSS.
4. wrk (a separate load-generator process, bench/wrk_continue.lua) drives POST /continue with
   realistic requests (histories of 5-50 known tracks drawn by popularity, random context):
   - exact uncached, ANN uncached: every body is distinct and Redis is flushed before each run;
   - cached: 100 bodies, answered once before the run, so every request is a Redis hit;
   at 1 client (latency) and 8 clients (capacity), after a short warm-up.
5. Scoring alone, in-process: the Recommender's exact vs ANN time per request and their top-20
   overlap, on the same requests.

Prints a Markdown table, then one line of JSON with every figure (the last line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reliability.components import free_port, port_open, wait_until  # noqa: E402  (after the path)
from reliability.load import request_bodies  # noqa: E402

VENV_BIN = Path(sys.executable).parent
WRK_SCRIPT = REPO / "bench" / "wrk_continue.lua"
TARGETS = {  # serving targets: default catalog, one process, this 2-core machine
    "exact_1_p50_ms": 5.0, "exact_1_p99_ms": 15.0, "exact_8_rps": 300.0, "exact_8_p99_ms": 120.0,
    "cached_8_rps": 2000.0, "ann_speedup": 3.0, "ann_overlap": 0.95,
}


def log(message: str) -> None:
    print(f"bench-serve: {message}", file=sys.stderr, flush=True)


def wait_port(port: int, timeout_s: float) -> None:
    wait_until(lambda: port_open(port), timeout_s, what=f"something listening on port {port}")


# -- data and model --------------------------------------------------------------------------------

def use_throwaway_store(store: Path) -> str:
    uri = f"sqlite:///{store}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_ARTIFACT_ROOT"] = str(store / "mlartifacts")
    from playlistai.config import get_settings

    get_settings.cache_clear()
    return uri


def ensure_data(size: str, data_dir: Path) -> None:
    from playlistai.data.layout import DataLayout

    if DataLayout.of(data_dir).vocab.exists():
        return
    with tempfile.TemporaryDirectory(prefix="bench-serve-mlflow-") as store:
        use_throwaway_store(Path(store))
        from playlistai.data.stages import ensure_synthetic_dataset

        started = time.perf_counter()
        ensure_synthetic_dataset(data_dir, size)
        log(f"built {size} data in {time.perf_counter() - started:.0f} s -> {data_dir}")


def fetch_checkpoint(uri: str, work_dir: Path) -> Path:
    """A checkpoint folder as is, or an MLflow artifact URI downloaded once into `work_dir` (from the
    store the caller's environment names, so before any throw-away store replaces it)."""
    if Path(uri).is_dir():
        return Path(uri).resolve()
    target = work_dir / f"checkpoint-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    if not target.is_dir():
        import mlflow

        work_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=work_dir))
        shutil.move(mlflow.artifacts.download_artifacts(uri, dst_path=str(staging)), target)
        shutil.rmtree(staging)
        log(f"downloaded {uri} -> {target}")
    return target


def ensure_package(data_dir: Path, work_dir: Path, checkpoint: Path | None = None) -> Path:
    """The trained checkpoint folder, or an untrained SASRec of the default shape, packaged (FAISS
    index included); kept for later runs with the same checkpoint."""
    from playlistai.registry.packaging import build_package

    name = f"package-{hashlib.sha256(str(checkpoint).encode()).hexdigest()[:12]}" if checkpoint else "package"
    package = work_dir / name
    if (package / "manifest.json").exists():
        return package
    staging = work_dir / f"{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    if checkpoint:
        build_package(checkpoint, data_dir, staging)
        staging.rename(package)
        log(f"packaged the trained checkpoint {checkpoint} in {time.perf_counter() - started:.0f} s")
        return package
    import torch

    from playlistai.config import get_settings
    from playlistai.data.sequences import load_vocab
    from playlistai.models import ModelConfig, build_model
    from playlistai.models.checkpoint import save_checkpoint

    settings = get_settings()
    torch.manual_seed(0)
    vocab = load_vocab(data_dir)
    config = ModelConfig(family="sasrec", vocab_size=vocab.size, d_model=settings.MODEL_D, n_layers=2,
                         max_seq_len=settings.MAX_SEQ_LEN)
    checkpoint = save_checkpoint(work_dir / "checkpoint", build_model(config), vocab)
    build_package(checkpoint, data_dir, staging)
    staging.rename(package)
    log(f"packaged the bench model ({vocab.size - 1} tracks) in {time.perf_counter() - started:.0f} s")
    return package


def register_production(package: Path, store: Path) -> str:
    """Register the package as playlistai@production in a throw-away store; return its tracking URI."""
    uri = use_throwaway_store(store)
    import mlflow

    from playlistai.registry.pyfunc import log_package_model
    from playlistai.tracking import configure_mlflow

    configure_mlflow()
    with mlflow.start_run(run_name="bench-serve-model"):
        info = log_package_model(package)
    version = mlflow.register_model(info.model_uri, "playlistai").version
    mlflow.MlflowClient().set_registered_model_alias("playlistai", "production", version)
    return uri


# -- requests --------------------------------------------------------------------------------------

def run_wrk(port: int, bodies_file: Path, clients: int, duration_s: float) -> dict:
    threads = min(clients, 2)
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(duration_s))}s", "--timeout", "5s",
               "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}", "--", str(bodies_file), str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON "):])
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    return {
        "clients": clients,
        "requests": raw["requests"],
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": raw["p50_us"] / 1000, "p95_ms": raw["p95_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000, "mean_ms": round(raw["mean_us"] / 1000, 3),
        "errors": errors,
    }


# -- scoring alone ---------------------------------------------------------------------------------

def scoring_comparison(package: Path, bodies: list[str], repeats: int = 1) -> dict:
    """Exact vs ANN time of Recommender.recommend on the same requests, and their top-20 overlap."""
    from playlistai.inference import Recommender

    recommender = Recommender.from_directory(package, num_threads=1)   # as the API runs it (TORCH_THREADS)
    requests = [json.loads(b) for b in bodies]
    args = [(r["tracks"], 20, r["context"]["hour"], r["context"]["dow"]) for r in requests]
    for a in args[:20]:
        recommender.recommend(*a)
        recommender.recommend(*a, use_ann=True)
    timings, answers = {}, {}
    for mode, use_ann in (("exact", False), ("ann", True)):
        per_request = []
        answers[mode] = []
        for a in args:
            started = time.perf_counter()
            result = recommender.recommend(*a, use_ann=use_ann)
            per_request.append((time.perf_counter() - started) * 1000)
            answers[mode].append({t for t, _ in result.items})
        timings[mode] = per_request
    overlap = float(np.mean([len(e & a) / 20 for e, a in zip(answers["exact"], answers["ann"], strict=True)]))
    exact_ms, ann_ms = float(np.median(timings["exact"])), float(np.median(timings["ann"]))
    return {
        "catalog": recommender.catalog_size, "index": recommender.ann_params.index_type,
        "exact_p50_ms": round(exact_ms, 3), "ann_p50_ms": round(ann_ms, 3),
        "exact_p99_ms": round(float(np.percentile(timings["exact"], 99)), 3),
        "ann_p99_ms": round(float(np.percentile(timings["ann"], 99)), 3),
        "ann_speedup": round(exact_ms / ann_ms, 2), "top20_overlap": round(overlap, 4), "requests": len(args),
    }


# -- one catalog size ------------------------------------------------------------------------------

def bench_size(size: str, args) -> dict:
    """Every worker count's runs on one catalog; one Redis, one registered model for all of them."""
    import redis

    from playlistai.data.sequences import load_vocab

    data_dir = Path(args.data_root) / size
    work_dir = Path(args.work_root) / size
    work_dir.mkdir(parents=True, exist_ok=True)
    ensure_data(size, data_dir)
    vocab = load_vocab(data_dir)

    store = Path(tempfile.mkdtemp(prefix="bench-serve-store-"))
    redis_port = free_port()
    redis_server = None
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "USE_FAISS": "false", "LOG_LEVEL": "warning"}
        if args.model_uri:
            env["MODEL_URI"] = args.model_uri
            package = None
        else:
            package = ensure_package(data_dir, work_dir, args.checkpoints.get(size))
            env["MLFLOW_TRACKING_URI"] = register_production(package, store)
            env.pop("MODEL_URI", None)
            env["REGISTERED_MODEL_NAME"], env["MODEL_ALIAS"] = "playlistai", "production"

        redis_server = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(redis_port, 10)
        cache = redis.Redis(port=redis_port)

        files = {}
        for scenario, use_ann, n, seed in (("exact", False, args.unique_bodies, 1), ("ann", True, args.unique_bodies, 2),
                                           ("cached", False, 100, 3)):
            files[scenario] = work_dir / f"bodies-{scenario}.jsonl"
            files[scenario].write_bytes(b"\n".join(request_bodies(vocab, n, seed, use_ann)) + b"\n")

        runs, servers = [], []
        for workers in args.workers:
            server = bench_workers(size, workers, env, work_dir, files, cache, args)
            runs += server.pop("runs")
            servers.append(server)
    finally:
        if redis_server is not None:
            stop(redis_server)
        shutil.rmtree(store, ignore_errors=True)

    scoring = None
    if package is not None and not args.skip_scoring:
        bodies = files["exact"].read_text().splitlines()[: args.scoring_requests]
        scoring = scoring_comparison(package, bodies)
        log(f"{size}: scoring {json.dumps(scoring)}")
    return {"size": size, "catalog": len(vocab), "runs": runs, "servers": servers, "scoring": scoring}


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def bench_workers(size: str, workers: int, env: dict, work_dir: Path, files: dict, cache, args) -> dict:
    """The API as `make api` runs it, with `workers` workers: every scenario at every client count."""
    import httpx
    import psutil

    api_port = free_port()
    metrics_dir = Path(tempfile.mkdtemp(prefix="bench-serve-metrics-"))
    server_env = {**env, "API_PORT": str(api_port), "API_HOST": "127.0.0.1", "WEB_CONCURRENCY": str(workers),
                  "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    api_log = (work_dir / f"api-{workers}.log").open("w")
    server = subprocess.Popen([str(VENV_BIN / "gunicorn"), "serving.main:app", "-c", "serving/gunicorn_conf.py"],
                              cwd=REPO, env=server_env, stdout=api_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_port(api_port, 300)
        # every worker loads the model on its own: wait until enough /healthz answers say loaded
        # (the kernel spreads connections, so a few more tries than workers)
        def loaded() -> bool:
            answers = [httpx.get(f"{base}/healthz", timeout=5).json() for _ in range(4 * workers)]
            return all(a["model_loaded"] and a["cache_connected"] for a in answers)
        wait_until(loaded, 300, what=f"{workers} workers with the model loaded")
        health = httpx.get(f"{base}/healthz", timeout=5).json()
        log(f"{size}: {workers} worker(s) serve model version {health['model_version']} on port {api_port}")

        runs = []
        for scenario in args.scenarios:
            for clients in args.clients:
                cache.flushall()
                if scenario == "cached":
                    for body in files["cached"].read_text().splitlines():
                        httpx.post(f"{base}/continue", content=body, headers={"content-type": "application/json"})
                run_wrk(api_port, files[scenario], clients, args.warmup)
                if scenario != "cached":
                    cache.flushall()
                result = {"size": size, "workers": workers, "scenario": scenario,
                          **run_wrk(api_port, files[scenario], clients, args.duration)}
                runs.append(result)
                log(json.dumps(result))
                if args.profile and scenario == "exact" and clients == 1 and workers == 1:
                    worker_pid = psutil.Process(server.pid).children()[0].pid
                    result["profile"] = profile_api(worker_pid, api_port, files[scenario], work_dir)
        worker_rss_mb = [round(child.memory_info().rss / 2**20) for child in psutil.Process(server.pid).children()]
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        stop(server)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    # answers that were not 200, by status (503: the admission queue refused a request that would
    # have waited past its target; wrk counts those as errors too)
    refused: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("requests_total{") and 'status="200"' not in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            refused[status] = refused.get(status, 0) + float(line.rsplit(" ", 1)[1])
    # Redis calls that timed out (REDIS_TIMEOUT_MS) and fell back to the in-process cache
    cache_errors = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("cache_errors_total{"))
    return {"workers": workers, "model_version": health["model_version"], "runs": runs,
            "worker_rss_mb": worker_rss_mb, "non_200": refused, "redis_fallbacks": cache_errors}


def profile_api(pid: int, port: int, bodies: Path, work_dir: Path) -> str | None:
    """py-spy of the API under 1 client, exact uncached; returns the path of the flame graph."""
    py_spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(py_spy).exists():
        log("py-spy is not installed (pip install py-spy): no profile")
        return None
    out = work_dir / "profile-exact-1.txt"
    spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", "8", "--rate", "500", "--format",
                            "raw", "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run_wrk(port, bodies, 1, 8)
    spy.wait(timeout=60)
    return str(out)


def markdown_table(results: list[dict]) -> str:
    lines = ["| catalog | workers | scenario | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in results:
        for r in size["runs"]:
            lines.append(f"| {size['size']} ({size['catalog']:,} tracks) | {r['workers']} | {r['scenario']} | "
                         f"{r['clients']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['errors']} |")
    lines += ["", "| catalog | workers | RSS per worker (MB) | answers not 200, by status | Redis fallbacks |",
              "| --- | ---: | --- | --- | ---: |"]
    for size in results:
        for server in size["servers"]:
            rss = ", ".join(f"{mb:,}" for mb in server["worker_rss_mb"])
            statuses = ", ".join(f"{n:,.0f} x {status}" for status, n in sorted(server["non_200"].items())) or "none"
            lines.append(f"| {size['size']} | {server['workers']} | {rss} | {statuses} | {server['redis_fallbacks']:.0f} |")
    scoring = [s for s in results if s["scoring"]]
    if scoring:
        lines += ["", "| catalog | index | exact p50 ms | ANN p50 ms | speed-up | top-20 overlap |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for s in scoring:
            c = s["scoring"]
            lines.append(f"| {s['size']} ({c['catalog']:,}) | {c['index']} | {c['exact_p50_ms']:.2f} | "
                         f"{c['ann_p50_ms']:.2f} | {c['ann_speedup']:.1f}x | {c['top20_overlap']:.3f} |")
    return "\n".join(lines)


def summary(results: list[dict]) -> dict:
    flat = {}
    for size in results:
        for r in size["runs"]:
            key = f"{size['size']}_w{r['workers']}_{r['scenario']}_{r['clients']}"
            flat[f"{key}_rps"] = r["rps"]
            flat[f"{key}_p50_ms"] = r["p50_ms"]
            flat[f"{key}_p99_ms"] = r["p99_ms"]
            flat[f"{key}_errors"] = r["errors"]
        for server in size["servers"]:
            key = f"{size['size']}_w{server['workers']}"
            flat[f"{key}_max_worker_rss_mb"] = max(server["worker_rss_mb"], default=0)
            flat[f"{key}_server_5xx"] = sum(n for status, n in server["non_200"].items() if status.startswith("5"))
            flat[f"{key}_redis_fallbacks"] = server["redis_fallbacks"]
        if size["scoring"]:
            flat[f"{size['size']}_ann_speedup"] = size["scoring"]["ann_speedup"]
            flat[f"{size['size']}_ann_top20_overlap"] = size["scoring"]["top20_overlap"]
    return flat


def parse_checkpoints(text: str) -> dict[str, str]:
    """`large=runs:/abc/checkpoint,default=/path` -> {size: uri}"""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0] or not pair[1] for pair in pairs):
        raise SystemExit(f"bench-serve: --checkpoints takes size=uri pairs separated by commas, got {text!r}")
    return {size.strip(): uri.strip() for size, uri in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="default")
    parser.add_argument("--scenarios", default="exact,ann,cached")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--workers", default=f"1,{len(os.sched_getaffinity(0))}",
                        help="API worker counts to compare (one worker: how `make api` served before)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    parser.add_argument("--unique-bodies", type=int, default=20_000)
    parser.add_argument("--scoring-requests", type=int, default=500)
    parser.add_argument("--skip-scoring", action="store_true")
    parser.add_argument("--data-root", default="data/bench")
    parser.add_argument("--work-root", default="data/bench-serve")
    parser.add_argument("--model-uri", default="", help="serve this model instead of building the bench model")
    parser.add_argument("--checkpoints", default="", help="size=checkpoint pairs: trained models to package and serve")
    parser.add_argument("--profile", action="store_true", help="py-spy the API during exact, 1 client")
    args = parser.parse_args()
    args.scenarios = args.scenarios.split(",")
    args.clients = [int(c) for c in args.clients.split(",")]
    args.workers = sorted({int(w) for w in args.workers.split(",")})
    if shutil.which("wrk") is None:
        sys.exit("bench-serve: wrk is not installed (apt-get install -y wrk; `make bench-serve` does it)")
    # downloaded first: the data and model steps point the environment at throw-away stores
    args.checkpoints = {size: fetch_checkpoint(uri, Path(args.work_root) / size)
                        for size, uri in parse_checkpoints(args.checkpoints).items()}

    results = [bench_size(size, args) for size in args.sizes.split(",")]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    print(f"\nPOST /continue, gunicorn with uvicorn workers, wrk closed-loop; {machine}; {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    print(markdown_table(results))
    print(json.dumps({"bench": "serve", "machine": machine, **summary(results)}, separators=(",", ":")))


if __name__ == "__main__":
    main()
