"""Where a stage's start-up seconds go, old code against new, side by side in one run.

    python bench/bench_startup.py [--old-ref HEAD] [--repeats 5] [--out results.json]

For each code version (the working tree, and a `git archive` of --old-ref), in fresh copies of the
project that share this virtual environment:

1. imports: `python -c "import entrypoints.<stage>"` for every stage (the wall time of a fresh
   interpreter, the median of --repeats), and `python -X importtime` of the same, summed per
   top-level package (torch, ray, mlflow, alibi_detect, pandas, ...): what each stage pays before
   its own code runs;
2. `mlflow run . -e data --env-manager local -P size=tiny` on a fresh store and again on the same
   store (the launcher, the stage's interpreter, its MLflow run, the data work); the stage's own
   work is its `stage_seconds` metric, so wall - stage_seconds is the fixed start-up cost;
3. `make data SIZE=tiny`: the same through the Makefile (which first asks Settings for the
   tracking URI and experiment).

Versions alternate run by run, so a change of load hits both. Printed: a table per measurement,
the machine, the date, the load average at the start and the end; the last line is one JSON object.
Run it on a quiet machine: start-up is CPU-bound, and other processes' load shows up one to one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STAGES = ("data", "preprocess", "splits", "train", "evaluate", "register", "main", "drift")
PACKAGES = ("torch", "ray", "mlflow", "alibi_detect", "tensorflow", "pandas", "matplotlib", "faiss", "sklearn")
COPY_IGNORE = {".venv", ".git", "data", "mlartifacts", "mlflow.db", "mlruns", "outputs", ".pytest_cache", ".ray",
               "tmp", ".env", "__pycache__"}


def copy_tree(dst: Path, ref: str | None) -> Path:
    """The working tree (ref None) or `git archive ref`, without data, stores and caches."""
    if ref is None:
        def ignore(directory: str, names: list[str]) -> set[str]:
            top = Path(directory).resolve() == REPO
            return {n for n in names if (top and n in COPY_IGNORE) or n == "__pycache__" or n.endswith(".egg-info")}

        shutil.copytree(REPO, dst, ignore=ignore)
        return dst
    dst.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO, capture_output=True, check=True).stdout
    tar = dst / ".src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dst, filter="data")
    tar.unlink()
    return dst


def env_for(tree: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", MLFLOW_TRACKING_URI=f"sqlite:///{tree}/mlflow.db",
               MLFLOW_EXPERIMENT_NAME="startup", PYTHONDONTWRITEBYTECODE="1")
    return env


def wall(cmd: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds, proc


def import_profile(stage: str, tree: Path, env: dict) -> dict[str, float]:
    """Seconds per top-level package (cumulative, as -X importtime counts) and in all."""
    _, proc = wall([sys.executable, "-X", "importtime", "-c", f"import entrypoints.{stage}"], tree, env)
    out: dict[str, float] = {}
    total = 0
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        depth, name, cumulative = len(m.group(3)), m.group(4), int(m.group(2))
        if depth == 1:
            total += cumulative
        if name in PACKAGES:
            out[name] = max(out.get(name, 0.0), cumulative / 1e6)
    out["all"] = total / 1e6
    return out


def data_stage_seconds(tree: Path) -> float:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tree}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("startup").experiment_id],
                              "tags.stage = 'data'", order_by=["start_time DESC"], max_results=1)
    return runs[0].data.metrics["stage_seconds"]


def reset_store(tree: Path) -> None:
    for name in ("mlflow.db", "mlartifacts", "mlruns", "data"):
        path = tree / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-ref", default="HEAD", help="git ref of the old code ('' = measure the working tree only)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="playlistai-startup-"))
    versions = {"new": copy_tree(root / "new", None)}
    if args.old_ref:
        versions = {"old": copy_tree(root / "old", args.old_ref), **versions}
    imports = {v: {s: [] for s in STAGES} for v in versions}
    packages = {v: {} for v in versions}
    runs = {v: {"fresh": [], "warm": [], "work": [], "make": []} for v in versions}

    for _ in range(args.repeats):
        for v, tree in versions.items():
            env = env_for(tree)
            for stage in STAGES:
                seconds, _ = wall([sys.executable, "-c", f"import entrypoints.{stage}"], tree, env)
                imports[v][stage].append(seconds)
    for v, tree in versions.items():
        packages[v] = {stage: import_profile(stage, tree, env_for(tree)) for stage in STAGES}

    mlflow_run = ["mlflow", "run", ".", "-e", "data", "--env-manager", "local", "-P", "size=tiny"]
    make_data = ["make", "data", "SIZE=tiny", f"VENV={VENV_BIN.parent}", "-o", f"{VENV_BIN.parent}/.installed"]
    for _ in range(args.repeats):
        for v, tree in versions.items():
            env = env_for(tree)
            reset_store(tree)
            seconds, _ = wall(mlflow_run, tree, env)
            runs[v]["fresh"].append(seconds)
            seconds, _ = wall(mlflow_run, tree, env)
            runs[v]["warm"].append(seconds)
            runs[v]["work"].append(data_stage_seconds(tree))
            seconds, _ = wall(make_data, tree, env)
            runs[v]["make"].append(seconds)

    load_end = os.getloadavg()
    summary = {
        "bench": "startup", "date": started, "old_ref": args.old_ref or None, "repeats": args.repeats,
        "machine": f"{platform.machine()} {os.cpu_count()} CPU, {cpu_model()}, Python {platform.python_version()}",
        "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in load_end],
        "import_seconds": {v: {s: median(x) for s, x in st.items()} for v, st in imports.items()},
        "import_packages": packages,
        "mlflow_run_data_tiny": {v: {k: median(x) for k, x in r.items()} for v, r in runs.items()},
    }
    for r in summary["mlflow_run_data_tiny"].values():
        r["fixed_warm"] = round(r["warm"] - r["work"], 2)
        r["fixed_make"] = round(r["make"] - r["work"], 2)

    print(f"machine: {summary['machine']}; {started}; load average {load_start[0]:.2f} at start, "
          f"{load_end[0]:.2f} at end; median of {args.repeats}")
    print("\nimport entrypoints.<stage> (fresh interpreter, s) and what torch / ray / alibi_detect cost in it:")
    names = list(versions)
    print(f"{'stage':<11}" + "".join(f"{n:>8}" for n in names) + "".join(f"{n + ' torch':>12}" for n in names))
    for stage in STAGES:
        row = "".join(f"{summary['import_seconds'][n][stage]:8.2f}" for n in names)
        row += "".join(f"{packages[n][stage].get('torch', 0.0):12.2f}" for n in names)
        print(f"{stage:<11}{row}")
    print("\nmlflow run . -e data -P size=tiny (s): fresh store, same store, the stage's own work, make data, "
          "and the fixed start-up (same store - work; make - work)")
    for n in names:
        r = summary["mlflow_run_data_tiny"][n]
        print(f"{n:<5} fresh {r['fresh']:6.2f}  warm {r['warm']:6.2f}  work {r['work']:5.2f}  make {r['make']:6.2f}  "
              f"fixed {r['fixed_warm']:6.2f} / {r['fixed_make']:6.2f}")
    text = json.dumps(summary)
    if args.out:
        args.out.write_text(text)
    shutil.rmtree(root, ignore_errors=True)
    print(text)


def cpu_model() -> str:
    """The CPU's model name, as benchmarks record it beside their figures."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
