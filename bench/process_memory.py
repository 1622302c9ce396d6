"""Peak memory of a command's process tree, process by process: RSS, PSS and USS.

    python bench/process_memory.py [--interval 2] [--limit-mb N] [--json out.json] -- <command> [args...]

RSS counts every page a process maps, shared ones in full in each process that maps them: Ray's
workers all map the object store, so their RSS overstates what each holds. PSS splits each shared
page between the processes that map it (the sum over processes is the tree's real footprint); USS
is what only that process holds. The tree (the command and every descendant, Ray's raylet, GCS and
workers included) is sampled every --interval seconds; printed at the end: the command's exit
status and wall time, the peak of the tree's summed PSS, and per process its peaks, largest first.
Exits with the command's status. `--limit-mb` records a command that would exhaust the machine:
when the tree's summed PSS passes the limit, the whole tree is killed, the figures so far are
printed with the time it passed, and the exit status is 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import psutil


@dataclass
class Peak:
    pid: int
    name: str
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    uss_mb: float = 0.0


def describe(process: psutil.Process) -> str:
    """A short name: Ray's processes by their title (ray::IDLE, raylet, gcs_server), others by
    their command line."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "?"
    if not cmdline:
        return process.name()
    first = os.path.basename(cmdline[0])
    if first.startswith("ray::") or first in {"raylet", "gcs_server"}:
        return first
    return " ".join([first, *cmdline[1:4]])[:80]


def sample(root: psutil.Process, peaks: dict[int, Peak]) -> float:
    """Update each process's peaks; return the tree's summed PSS in MB."""
    total = 0.0
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for process in tree:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        peak = peaks.get(process.pid)
        if peak is None:
            peak = peaks[process.pid] = Peak(process.pid, describe(process))
        mb = 1024 * 1024
        peak.rss_mb = max(peak.rss_mb, info.rss / mb)
        peak.pss_mb = max(peak.pss_mb, info.pss / mb)
        peak.uss_mb = max(peak.uss_mb, info.uss / mb)
        total += info.pss / mb
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--top", type=int, default=12, help="processes listed (largest peak PSS first)")
    parser.add_argument("--limit-mb", type=float, default=0.0,
                        help="kill the tree when its summed PSS passes this (0 = no limit)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(command)
    root = psutil.Process(proc.pid)
    peaks: dict[int, Peak] = {}
    tree_pss = 0.0
    stopped_at = None
    while proc.poll() is None:
        now = sample(root, peaks)
        tree_pss = max(tree_pss, now)
        if args.limit_mb and now > args.limit_mb:
            stopped_at = time.perf_counter() - started
            kill_tree(root)
            proc.wait()
            break
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    if stopped_at is not None:
        print(f"stopped: the tree's PSS passed --limit-mb {args.limit_mb:,.0f} MB after {stopped_at:.0f} s; "
              f"the command was killed", file=sys.stderr)
    ordered = sorted(peaks.values(), key=lambda p: p.pss_mb, reverse=True)
    print(f"exit {proc.returncode}, wall {wall:.0f} s, load {load_before:.1f} -> {os.getloadavg()[0]:.1f}, "
          f"tree peak PSS {tree_pss:,.0f} MB, {len(peaks)} processes", file=sys.stderr)
    print(f"{'peak RSS':>10} {'peak PSS':>10} {'peak USS':>10}  process", file=sys.stderr)
    for p in ordered[: args.top]:
        print(f"{p.rss_mb:8,.0f}MB {p.pss_mb:8,.0f}MB {p.uss_mb:8,.0f}MB  {p.name}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "exit": proc.returncode, "wall_seconds": wall,
                       "stopped_at_limit_seconds": stopped_at, "limit_mb": args.limit_mb or None,
                       "load_before": load_before, "tree_peak_pss_mb": tree_pss,
                       "processes": [asdict(p) for p in ordered]}, f, indent=1)
    return 3 if stopped_at is not None else proc.returncode


def kill_tree(root: psutil.Process) -> None:
    try:
        processes = [*root.children(recursive=True), root]
    except psutil.Error:
        processes = [root]
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    # the command itself is left for Popen.wait to reap, so that its status says it was killed
    psutil.wait_procs([p for p in processes if p.pid != root.pid], timeout=30)


if __name__ == "__main__":
    sys.exit(main())
