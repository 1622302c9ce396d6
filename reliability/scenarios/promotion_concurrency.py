"""8. Concurrency of promotion: two `register` processes started at once, against a real
`mlflow server` on PostgreSQL (SQLite only when PostgreSQL cannot be reached, and the figures say so).

Three training runs of clearly different quality are made once with the `train` entry point (a
SASRec trained `train_epochs` epochs, the same trained 1 epoch, and a near-untrained one at a learning
rate of 1e-6); the near-untrained one is registered first and is the production model each round
starts from. Each round then registers a new version of the strong and of the weak run in two
processes that run side by side, in a random order. In a "together" round the second starts less
than half a second after the first, so both compare with the same production and the later one
finds it changed under the lock (it compares again); in a "staggered" round the first has a head
start of 30-60% of one registration, so it is promoted before the other reads production. The
first three rounds cover together / weak staggered first / strong staggered first, further rounds
are drawn at random, and the rounds are shuffled. Both beat the baseline, so both
want the production alias: the promotion lock and the re-comparison under it must leave the strong
version in production whichever arrives first (if the weak one is promoted first, the strong one
is compared again with it and replaces it). The first round starts with no production version at
all (both pass "no production yet", and the later one must then compare).

A lock wait is a gate that found the lock taken: it retries every 0.5 s, so its recorded
`gate_lock_wait_s` is at least that (an uncontended lock costs one request, a few milliseconds).

After each round: production is the strong candidate's version and that version's gate decision is
`promoted`; every new version carries its gate decision; a weak version was either rejected or
promoted and then beaten by the strong one; the lock registered model is gone; both processes
exited 0 without a traceback and their runs are FINISHED.
"""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from reliability.components import MlflowServer
from reliability.core import ScenarioResult, run_scenario

KEY = "8"
TITLE = "Concurrency of promotion"
REPO = Path(__file__).resolve().parents[2]
MODEL = "playlistai"
ALIAS = "production"
LOCK = MODEL + ".promotion-lock"
LOCK_POLL_S = 0.5      # PromotionLock's retry interval
ROUNDS = {"full": 6, "short": 3}
N_RESAMPLES = {"full": "1000", "short": "200"}
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
TRAIN_SHAPE = {
    "tiny": ["--d-model", "32", "--n-layers", "1", "--batch-size", "128", "--val-max-cases", "300"],
    "default": ["--d-model", "32", "--n-layers", "1", "--batch-size", "256", "--val-max-cases", "1000"],
}
log = logging.getLogger("reliability")


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


def _postgres_database() -> str | None:
    """A throw-away database on the local PostgreSQL, or None when it cannot be reached."""
    name = f"playlistai_promotion_{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run([*PSQL, f"CREATE DATABASE {name}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("PostgreSQL unreachable (%s): the registry runs on SQLite", exc)
        return None
    if proc.returncode != 0:
        log.warning("PostgreSQL unreachable (%s): the registry runs on SQLite", proc.stderr.strip()[:300])
        return None
    return name


def _drop_database(name: str) -> None:
    subprocess.run([*PSQL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True, timeout=60)


def _run(ws, result: ScenarioResult) -> None:
    ws.ensure_data()
    work = ws.root / "promotion"
    work.mkdir(exist_ok=True)
    database = _postgres_database()
    if database:
        backend, label = f"postgresql://postgres@127.0.0.1:5432/{database}", "PostgreSQL"
    else:
        backend, label = f"sqlite:///{work}/registry.db", "SQLite (PostgreSQL unreachable)"
    result.figure("registry backend", label)
    server = MlflowServer(backend, work / "served-artifacts", work / "mlflow-server.log")
    try:
        server.start()
        Promotions(ws, result, server.uri, work).run()
    finally:
        server.stop()
        if database:
            _drop_database(database)


class Promotions:
    def __init__(self, ws, result: ScenarioResult, tracking_uri: str, work: Path) -> None:
        import mlflow

        self.ws = ws
        self.result = result
        self.work = work
        self.uri = tracking_uri
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.n_resamples = N_RESAMPLES.get(ws.profile.name, "200")
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO),
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "OMP_NUM_THREADS": "1", "TORCH_THREADS": "1"}
        for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ARTIFACT_ROOT"):
            self.env.pop(leaked, None)

    def start(self, stage: str, args: list[str], name: str) -> tuple[subprocess.Popen, Path, Path]:
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        with out.open("w") as o, err.open("w") as e:
            process = subprocess.Popen([sys.executable, "-m", f"entrypoints.{stage}", *args], cwd=REPO, env=self.env,
                                       stdout=o, stderr=e)
        return process, out, err

    @staticmethod
    def finish(started: tuple[subprocess.Popen, Path, Path], timeout_s: float = 900) -> tuple[int, str, str]:
        process, out, err = started
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        return process.returncode, out.read_text(errors="replace"), err.read_text(errors="replace")

    # -- the candidates ------------------------------------------------------------------------------
    def train_candidates(self) -> dict[str, str]:
        ws = self.ws
        common = ["--model", "sasrec", *TRAIN_SHAPE.get(ws.profile.size, TRAIN_SHAPE["tiny"]), "--max-seq-len", "20",
                  "--patience", "0", "--trainer", "local", "--progress", "false", "--data-dir", str(ws.data_dir),
                  # the models alone: the neighbours' votes and transitions lift a weak model on tiny data
                  # to the strong one's level, and the scenario needs clearly different candidates
                  "--neighbour-mix", "false",
                  "--storage-path", str(self.work / "train-storage")]
        plans = {"strong": ["--epochs", str(max(3, ws.profile.train_epochs))],
                 "weak": ["--epochs", "1"],
                 "baseline": ["--epochs", "1", "--lr", "0.000001"]}
        # the experiment exists before three processes look for it at once
        subprocess.run([sys.executable, "-m", "playlistai.tracking"], cwd=REPO, env=self.env, check=True,
                       capture_output=True, timeout=120)
        started = {name: self.start("train", [*common, *extra], f"train-{name}") for name, extra in plans.items()}
        runs = {}
        for name, handle in started.items():
            code, out, err = self.finish(handle)
            if code != 0:
                raise RuntimeError(f"training the {name} candidate failed ({code}):\n{err[-1500:]}")
            runs[name] = re.search(r"checkpoint runs:/([0-9a-f]{32})/checkpoint", out).group(1)
        return runs

    def register(self, run_id: str, name: str):
        return self.start("register", ["--run-id", run_id, "--data-dir", str(self.ws.data_dir),
                                       "--n-resamples", self.n_resamples], name)

    # -- the rounds ----------------------------------------------------------------------------------
    def run(self) -> None:
        result = self.result
        t0 = time.perf_counter()
        runs = self.train_candidates()
        register_started = time.perf_counter()
        code, out, err = self.finish(self.register(runs["baseline"], "register-baseline"))
        register_s = time.perf_counter() - register_started
        if code != 0:
            raise RuntimeError(f"registering the baseline failed ({code}):\n{err[-1500:]}")
        baseline = _version_of(out)
        log.info("  candidates trained and baseline v%s registered in %.0f s", baseline, time.perf_counter() - t0)

        rng = random.Random()
        rounds = ROUNDS.get(self.ws.profile.name, 3)
        plan = [(rng.sample(["strong", "weak"], 2), "together"), (["weak", "strong"], "staggered"),
                (["strong", "weak"], "staggered")]
        plan += [(rng.sample(["strong", "weak"], 2), rng.choice(["together", "staggered"])) for _ in range(rounds)]
        plan = plan[:rounds]
        rng.shuffle(plan)
        problems: dict[str, list[str]] = {k: [] for k in
                                          ("crash", "production", "decision_tags", "weak", "lock", "finished")}
        seconds, orders, head_starts, lock_waits, waited_s, recompares, replaced = [], [], [], 0, 0.0, 0, 0
        for r in range(1, rounds + 1):
            if r == 1:
                self.client.delete_registered_model_alias(MODEL, ALIAS)   # nothing in production yet
            else:
                self.client.set_registered_model_alias(MODEL, ALIAS, baseline)
            before = self.client.get_registered_model(MODEL).aliases.get(ALIAS)
            order, timing = plan[r - 1]
            head_start = rng.uniform(0.0, 0.5) if timing == "together" else rng.uniform(0.3, 0.6) * register_s
            orders.append("".join(o[0] for o in order) + ("" if timing == "together" else "+"))
            head_starts.append(head_start)
            started_at = time.perf_counter()
            handles = {}
            for i, name in enumerate(order):
                if i:
                    time.sleep(head_start)
                handles[name] = self.register(runs[name], f"register-r{r}-{name}")
            finished = {name: self.finish(h) for name, h in handles.items()}
            seconds.append(time.perf_counter() - started_at)

            crashed = [f"{n}: exit {c}" + (" (traceback)" if "Traceback" in e else "")
                       for n, (c, _, e) in finished.items() if c != 0 or "Traceback" in e]
            if crashed:
                problems["crash"].append(f"round {r}: {crashed} {list(finished.values())[0][2][-600:]}")
                continue
            version = {n: _version_of(o) for n, (_, o, _) in finished.items()}
            tags = {n: self.client.get_model_version(MODEL, v).tags for n, v in version.items()}
            production = str(self.client.get_model_version_by_alias(MODEL, ALIAS).version)
            production_decision = self.client.get_model_version(MODEL, production).tags.get("gate_decision")
            log.info("  round %d (%s first, %s +%.2f s, production before: %s): strong v%s %s vs v%s, weak v%s %s vs v%s; "
                     "production v%s", r, order[0], timing, head_start, before or "none",
                     version["strong"], tags["strong"].get("gate_decision"), tags["strong"].get("gate_compared_with"),
                     version["weak"], tags["weak"].get("gate_decision"), tags["weak"].get("gate_compared_with"), production)

            if production != version["strong"] or production_decision != "promoted":
                problems["production"].append(f"round {r}: production v{production} ({production_decision}), "
                                              f"strong v{version['strong']}")
            missing = [n for n, t in tags.items() if t.get("gate_decision") not in ("promoted", "rejected")]
            if missing:
                problems["decision_tags"].append(f"round {r}: {missing} {[tags[n].get('gate_decision') for n in missing]}")
            weak = tags["weak"]
            if weak.get("gate_decision") == "promoted":
                replaced += 1
                if tags["strong"].get("gate_compared_with") != version["weak"]:
                    problems["weak"].append(f"round {r}: weak v{version['weak']} promoted, strong compared with "
                                            f"v{tags['strong'].get('gate_compared_with')}")
            elif weak.get("gate_decision") == "rejected" and weak.get("gate_compared_with") not in (
                    version["strong"], baseline):
                problems["weak"].append(f"round {r}: weak rejected against v{weak.get('gate_compared_with')}")
            if self._lock_held():
                problems["lock"].append(f"round {r}")
            for n, t in tags.items():
                lock_wait = float(t.get("gate_lock_wait_s", 0) or 0)
                lock_waits += lock_wait >= LOCK_POLL_S / 2
                waited_s += lock_wait
                recompares += int(t.get("gate_attempts", "1") or 1) > 1
                status = self.client.get_run(t["register_run_id"]).info.status
                if status != "FINISHED":
                    problems["finished"].append(f"round {r} {n}: {status}")

        result.check("no register process crashed (exit 0, no traceback)", not problems["crash"],
                     "; ".join(problems["crash"]) or f"{2 * rounds} processes")
        result.check("after every round production is the strong version, and it passed its gate",
                     not problems["production"] and not problems["crash"],
                     "; ".join(problems["production"]) or f"{rounds} rounds, orders {','.join(orders)}")
        result.check("every new version carries its gate decision", not problems["decision_tags"],
                     "; ".join(problems["decision_tags"]))
        result.check("a weak version was rejected, or promoted and then beaten by the strong one under the lock",
                     not problems["weak"], "; ".join(problems["weak"]) or f"promoted then replaced {replaced}x")
        result.check("the promotion lock is released after every round", not problems["lock"],
                     "held after " + ", ".join(problems["lock"]) if problems["lock"] else "")
        result.check("every register run is FINISHED", not problems["finished"], "; ".join(problems["finished"]))

        result.figure("rounds", rounds)
        result.figure("orders (s=strong first, +=staggered)", ",".join(orders))
        result.figure("max head start s", round(max(head_starts), 1))
        result.figure("lock waits", lock_waits)
        result.figure("lock wait s", round(waited_s, 2))
        result.figure("re-comparisons", recompares)
        result.figure("weak promoted then replaced", replaced)
        result.figure("s per round", round(sum(seconds) / max(len(seconds), 1), 1))

    def _lock_held(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(LOCK)
            return True
        except MlflowException:
            return False


def _version_of(stdout: str) -> str:
    match = re.search(rf"register: {re.escape(MODEL)} v(\d+):", stdout)
    if not match:
        raise RuntimeError(f"no version in the register output: {stdout[-500:]!r}")
    return match.group(1)
