"""`make reliability`: every scenario against real local components, then a summary and RELIABILITY.md.

    python -m reliability [--profile full|short] [--only sustained_load,redis_faults] [--report RELIABILITY.md]

Ends with the line `N passed, N failed` and a table of figures; exits 1 when a scenario failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from reliability.core import PROFILES, markdown_report, summary_line, write_report
from reliability.scenarios import MODULES, load
from reliability.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def quiet_libraries() -> None:
    """The suite's own log says what happens; MLflow's progress bars and advice would bury it."""
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "filelock", "faiss", "matplotlib", "ray"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios of: {', '.join(MODULES)}")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests/s of the load generator (default: the profile's; see RELIABILITY.md)")
    parser.add_argument("--sustained-s", type=float, default=None, help="length of the sustained-load run")
    parser.add_argument("--data-root", default=str(REPO / "data" / "reliability"))
    parser.add_argument("--report", default=str(REPO / "RELIABILITY.md"), help="'' writes no report")
    parser.add_argument("--json", default="", help="also write every result, check and figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, store) for a look")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s reliability: %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or MODULES
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(MODULES)}", file=sys.stderr)
        return 2

    profile = PROFILES[args.profile]
    if args.rate is not None:
        profile = dataclasses.replace(profile, rate_rps=args.rate)
    if args.sustained_s is not None:
        profile = dataclasses.replace(profile, sustained_s=args.sustained_s,
                                      warmup_s=min(profile.warmup_s, args.sustained_s / 5))
    root = Path(tempfile.mkdtemp(prefix="playlistai-reliability-"))
    workspace = Workspace(profile, root, Path(args.data_root))
    results = []
    try:
        for name in names:
            results.append(load(name).run(workspace))
    finally:
        workspace.close()
        if args.keep:
            print(f"run folder kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    command = "make reliability" if args.profile == "full" and not args.only else \
        "python -m reliability " + " ".join(a for a in (argv or sys.argv[1:]))
    report = markdown_report(results, profile, command.strip())
    if args.report:
        # a run of some scenarios adds (or replaces) its own section; a whole run replaces them all
        write_report(Path(args.report), report, replace_all=not args.only)
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str))
    print(report)
    for r in results:
        for failure in r.failures():
            print(f"FAILED {r.key}. {r.title}: {failure}")
    print(summary_line(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
