"""`python -m playlistai.launch . -e <stage> -P key=value ...`: `mlflow run . -e <stage> --env-manager local`
without the `mlflow` command's own start-up, for `make`.

It makes the call the `mlflow run` command makes, `mlflow.projects.run`: the MLproject's params
checked and defaulted the same way, the same run with the same project tags, the same
`=== Running command ... ===` lines, the stage in a process of its own. What it leaves out is the
command's start-up: `mlflow` imports its tracking server, its gateway and its assistant before it
reads a flag (2.5-3 s here, and 1 s more to exit), where this imports `mlflow.projects` (1.5 s).
The tracking URI and the experiment are those of Settings (environment or `.env`), the experiment
created with its artifact root as every stage creates it (`configure_mlflow`), so `make` needs no
`export` step first. A user types `mlflow run` itself; both give the same runs.

Exit status: the stage's failure is 1 (its own message is already on stderr), a launch that
cannot start (an unknown entry point, a malformed -P, a bad tracking URI) is 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from playlistai.cli import run_cli
from playlistai.config import SettingsError, get_settings


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"-P {pair!r}: expected name=value")
        if name in params:
            raise ValueError(f"-P {name}: given twice")
        params[name] = value
    return params


def launch(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m playlistai.launch",
                                     description="mlflow run <uri> --env-manager local, started faster")
    parser.add_argument("uri", help="the project (`.`)")
    parser.add_argument("-e", "--entry-point", default="main")
    parser.add_argument("-P", "--param-list", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    import mlflow.projects

    from playlistai.tracking import configure_mlflow

    try:
        params = parse_params(args.param_list)
        # the MLproject's commands say `python`: let that be this interpreter, as in an activated
        # environment, so `.venv/bin/python -m playlistai.launch` needs no `source .venv/bin/activate`
        os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        experiment_id = configure_mlflow(get_settings())
        mlflow.projects.run(args.uri, entry_point=args.entry_point, parameters=params, env_manager="local",
                            experiment_id=experiment_id, synchronous=True)
    except KeyboardInterrupt:  # mlflow.projects has already stopped the stage and marked its run FAILED
        print(f"launch {args.entry_point}: interrupted", file=sys.stderr)
        return 130
    except mlflow.projects.ExecutionException as exc:
        print(f"=== {exc} ===", file=sys.stderr)
        return 1
    except (ValueError, SettingsError, mlflow.exceptions.MlflowException) as exc:
        print(f"error: launch {args.entry_point}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(launch()))
