"""7. Pipeline faults: the entry points, run as the MLproject runs them, against a killed process,
a write error in the middle of a stage's outputs, and bad input files.

a. Killed training. `train` (in-process trainer, a small SASRec, `train_epochs` epochs) is SIGKILLed
   half-way through an epoch once epoch states were saved (epoch 3 when there are 3 or more: the
   length of epoch 2 says when half-way is, the first is slowed by start-up); `train` with
   `resume_from=<that run id>` must start at the epoch after the last saved state, end at the
   configured epoch count with a loadable checkpoint, and end the killed run (left RUNNING by the
   kill) as KILLED. The full profile does the same with `trainer=ray` (one worker; the whole
   process group is killed, as when a container dies, and no Ray process may outlive it).
b. A stage that fails while writing. `splits` gets a file-size limit (RLIMIT_FSIZE: the kernel
   answers EFBIG, as a full disk answers ENOSPC) that lets its first outputs through and stops a
   later one half-written; `data` is SIGKILLed while its events file is half-written. Either way the
   run is FAILED (or, killed, ended by the next stage), every file at its final path is the old
   complete version, temporaries do not outlive the next run, and a rerun succeeds. The `splits`
   stage reports to an `mlflow server` here: its SQLite file would hit the same size limit.
c. Bad input files for `data` (a line with too many fields, one with too few, a bad time, a line
   that is not UTF-8, an empty file): exit status 2, one line on stderr naming the file and the
   line, no traceback, the run FAILED with the error as its tag, nothing written to data_dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from reliability.core import ScenarioResult, run_scenario

KEY = "7"
TITLE = "Pipeline faults"
REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("reliability")

# the killed training run: small enough to be quick, slow enough per epoch (about half a second on
# `tiny` with one thread on a quiet machine) to be killed inside one
TRAIN_SHAPE = {
    "tiny": ["--d-model", "128", "--n-layers", "2", "--batch-size", "16", "--val-max-cases", "300"],
    "default": ["--d-model", "32", "--n-layers", "1", "--batch-size", "256", "--val-max-cases", "1000"],
}
CSV_ROWS = {"tiny": 300_000, "default": 1_000_000}   # the input whose write is killed
SPLIT_FRACS = ["--val-frac", "0.1", "--test-frac", "0.6"]  # a test split larger than train: see _write_error


def run(ws) -> ScenarioResult:
    return run_scenario(KEY, TITLE, lambda result: _run(ws, result))


def _run(ws, result: ScenarioResult) -> None:
    ws.ensure_data()
    faults = Faults(ws, result)
    parts = [faults.killed_training, faults.write_error, faults.killed_write, faults.bad_inputs]
    if ws.profile.name == "full":   # Ray's start-up (about 15 s a run here) would not fit the short profile
        parts.insert(1, faults.killed_training_ray)
    for part in parts:
        started = time.perf_counter()
        try:
            part()
        except Exception as exc:  # one part that breaks must not hide the others' results
            log.exception("%s raised", part.__name__)
            result.check(f"{part.__name__} ran to its end", False, f"{type(exc).__name__}: {exc}")
        log.info("  %s: %.0f s", part.__name__, time.perf_counter() - started)


class Prefixed:
    """The scenario result, with every check and figure name prefixed (one part run for another trainer)."""

    def __init__(self, result: ScenarioResult, prefix: str) -> None:
        self.result, self.prefix = result, prefix

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        return self.result.check(self.prefix + name, ok, detail)

    def figure(self, name: str, value) -> None:
        self.result.figure(self.prefix + name, value)


class Faults:
    def __init__(self, ws, result: ScenarioResult) -> None:
        self.ws = ws
        self.result = result
        self.work = ws.root / "pipeline-faults"
        self.work.mkdir(exist_ok=True)
        self.client = ws.client
        from playlistai.config import get_settings

        self.experiment_id = self.client.get_experiment_by_name(get_settings().MLFLOW_EXPERIMENT_NAME).experiment_id

    # -- helpers ---------------------------------------------------------------------------------
    def env(self, tracking_uri: str | None = None) -> dict[str, str]:
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri or self.ws.tracking_uri,
               "MLFLOW_ARTIFACT_ROOT": str(self.ws.artifact_root), "PYTHONPATH": str(REPO),
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TORCH_THREADS": "1"}
        for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(leaked, None)
        return env

    def data_copy(self, name: str) -> Path:
        target = self.work / name
        shutil.copytree(self.ws.data_dir, target)
        return target

    @staticmethod
    def command(stage: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"entrypoints.{stage}", *args]

    def stage(self, stage: str, *args: str, env: dict | None = None, timeout_s: float = 600,
              preexec_fn=None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(stage, *args), cwd=REPO, env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout_s, preexec_fn=preexec_fn)

    def stage_runs(self, stage: str, **params: str):
        where = " and ".join([f"tags.stage = '{stage}'", *(f"params.{k} = '{v}'" for k, v in params.items())])
        return self.client.search_runs([self.experiment_id], where, order_by=["attributes.start_time DESC"])

    @staticmethod
    def snapshot(data_dir: Path) -> dict[str, str]:
        """relative path -> sha256 of every file under data_dir, temporaries (dot names) included."""
        return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(data_dir.rglob("*")) if p.is_file()}

    @staticmethod
    def temporaries(data_dir: Path) -> list[str]:
        return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob(".*"))

    def check_outputs_intact(self, label: str, data_dir: Path, before: dict[str, str]) -> None:
        """Every file at a final path is the old complete version; every Parquet file still reads."""
        after = {k: v for k, v in self.snapshot(data_dir).items() if not any(p.startswith(".") for p in Path(k).parts)}
        changed = sorted(k for k, v in after.items() if before.get(k) != v)
        self.result.check(f"{label}: every file at its final path is the old complete version", not changed,
                          f"{len(after)} files unchanged" if not changed else f"changed or new: {changed[:5]}")
        unreadable = []
        for name in after:
            if name.endswith(".parquet"):
                try:
                    pd.read_parquet(data_dir / name)
                except Exception as exc:
                    unreadable.append(f"{name}: {exc}")
        self.result.check(f"{label}: every Parquet output reads", not unreadable, "; ".join(unreadable[:3]))

    # -- a. a training run killed mid-epoch, then resumed ------------------------------------------
    def killed_training_ray(self) -> None:
        self.killed_training("ray")

    def killed_training(self, trainer: str = "local") -> None:
        import psutil

        from playlistai.models.checkpoint import load_checkpoint
        from playlistai.training.worker import find_state_dirs

        ws = self.ws
        result = Prefixed(self.result, "" if trainer == "local" else f"{trainer}: ")
        epochs = ws.profile.train_epochs
        storage = self.work / f"train-storage-{trainer}"
        args = ["--model", "sasrec", *TRAIN_SHAPE.get(ws.profile.size, TRAIN_SHAPE["tiny"]), "--n-heads", "2",
                "--max-seq-len", "20", "--epochs", str(epochs), "--patience", "0", "--trainer", trainer,
                "--num-workers", "1", "--progress", "false", "--data-dir", str(ws.data_dir),
                "--storage-path", str(storage)]
        log_path = self.work / f"train-killed-{trainer}.log"
        # one thread in-process: epochs of a steady length on a shared machine (Ray sets its own)
        env = {**self.env(), "OMP_NUM_THREADS": "1"} if trainer == "local" else self.env()
        with log_path.open("w") as out:
            process = subprocess.Popen(self.command("train", *args), cwd=REPO, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        # the kill comes half-way through the epoch after `kill_after`: the first epoch is slower than
        # the others (start-up), so with 3+ epochs the length of epoch 2 says when "half-way" is
        kill_after = 2 if epochs >= 3 else 1
        try:
            saved = self._wait_for_state(process, storage, kill_after, timeout_s=900)
            run_id = next(storage.glob("*/epoch_*/meta.json")).parent.parent.name   # storage/<run id>/epoch_NNN
            if kill_after >= 2:
                epoch_s = saved[kill_after].stat().st_mtime - saved[kill_after - 1].stat().st_mtime
            else:
                epoch_s = self._epoch_seconds(run_id, 1)
            time.sleep(max(0.0, saved[kill_after].stat().st_mtime + 0.5 * epoch_s - time.time()))
            if process.poll() is not None:
                raise RuntimeError(f"training ended (exit {process.returncode}) before it could be killed")
            tree = psutil.Process(process.pid).children(recursive=True)   # Ray's processes, if any
            killed_at = time.time()
            os.killpg(process.pid, signal.SIGKILL)   # the whole process group, as when a container dies
            process.wait(timeout=30)
            _, alive = psutil.wait_procs(tree, timeout=30)
            for left in alive:      # started by this scenario: never leave them running
                left.kill()
            result.check("no process of the killed training outlives it", not alive,
                         f"{len(tree)} child processes, {len(alive)} still alive after 30 s")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

        states = find_state_dirs(storage / run_id)
        last = int(json.loads((states[-1] / "meta.json").read_text())["epoch"])
        last_state_at = (states[-1] / "meta.json").stat().st_mtime
        logged = [m.step for m in self.client.get_metric_history(run_id, "train_loss")]
        status_after_kill = self.client.get_run(run_id).info.status
        result.check("the training process died of SIGKILL after saving an epoch state",
                     process.returncode == -signal.SIGKILL and last >= 1,
                     f"exit {process.returncode}, last saved epoch {last} of {epochs}")
        result.check("the kill landed inside an epoch (no later epoch was completed)",
                     last < epochs and max(logged, default=0) <= last + 1,
                     f"epochs logged {logged}, last state epoch {last}")

        resume_started = time.time()
        proc = self.stage("train", *args, "--resume-from", run_id, env=env)
        result.check("train with resume_from=<killed run id> succeeds", proc.returncode == 0,
                     f"exit {proc.returncode} {proc.stderr[-600:]}")
        if proc.returncode != 0:
            return
        resumed = re.search(r"checkpoint runs:/([0-9a-f]{32})/checkpoint", proc.stdout).group(1)
        steps = [m.step for m in self.client.get_metric_history(resumed, "train_loss")]
        run = self.client.get_run(resumed)
        result.check("the resumed run starts at the epoch after the last saved state and ends at the configured count",
                     steps == list(range(last + 1, epochs + 1)) and run.data.metrics.get("epochs_run") == epochs,
                     f"epochs trained {steps}, epochs_run {run.data.metrics.get('epochs_run')}, configured {epochs}")
        killed = self.client.get_run(run_id)
        result.check("the killed run, left RUNNING by the kill, is ended as KILLED by the resume",
                     status_after_kill == "RUNNING" and killed.info.status == "KILLED"
                     and resumed in killed.data.tags.get("ended_by", "")
                     and run.data.tags.get("resumed_from_run") == run_id,
                     f"{status_after_kill} after the kill, {killed.info.status} after the resume: "
                     f"{killed.data.tags.get('ended_by', 'no ended_by tag')}")

        import mlflow
        import torch

        local = mlflow.artifacts.download_artifacts(f"runs:/{resumed}/checkpoint",
                                                    dst_path=str(self.work / f"resumed-ckpt-{trainer}"),
                                                    tracking_uri=ws.tracking_uri)
        model, vocab, config = load_checkpoint(local)
        scores = model.score_batch(torch.tensor([[0, 1, 2]]), torch.tensor([3]), torch.tensor([1]))
        result.check("the resumed run's final checkpoint loads and scores",
                     config.get("epochs_trained") == epochs and bool(torch.isfinite(scores[:, 1:]).all())
                     and tuple(scores.shape) == (1, vocab.size),   # index 0 is padding (-inf)
                     f"epochs_trained {config.get('epochs_trained')}, scores {tuple(scores.shape)}")

        result.figure("epoch resumed at", last + 1)
        result.figure("training s lost at the kill", round(killed_at - last_state_at, 1))
        history = self.client.get_metric_history(resumed, "epoch_seconds")
        if history:
            first_epoch = min(history, key=lambda m: m.step)
            result.figure("resume start-up s", round(first_epoch.timestamp / 1000 - first_epoch.value - resume_started, 1))

    def _wait_for_state(self, process: subprocess.Popen, storage: Path, epoch: int,
                        timeout_s: float) -> dict[int, Path]:
        """Poll until the state of `epoch` is saved; {epoch: its meta.json} of every state seen (the
        trainer keeps only the last two, so earlier ones are recorded as they appear)."""
        seen: dict[int, Path] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for meta in storage.glob("*/epoch_*/meta.json"):
                number = int(meta.parent.name.split("_")[1])
                if number not in seen:
                    kept = storage.with_name(storage.name + "-seen") / meta.parent.name
                    kept.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(meta, kept / "meta.json")     # keeps the mtime: when it was saved
                    seen[number] = kept / "meta.json"
            if epoch in seen:
                return seen
            if process.poll() is not None:
                raise RuntimeError(f"training exited ({process.returncode}) before saving epoch {epoch}")
            time.sleep(0.02)
        raise TimeoutError(f"no state of epoch {epoch} under {storage} after {timeout_s:.0f} s")

    def _epoch_seconds(self, run_id: str, epoch: int) -> float:
        for _ in range(50):
            history = {m.step: m.value for m in self.client.get_metric_history(run_id, "epoch_seconds")}
            if epoch in history:
                return history[epoch]
            time.sleep(0.1)
        raise RuntimeError(f"run {run_id} logged no epoch_seconds for epoch {epoch}")

    # -- b1. a write error between the outputs of `splits` -------------------------------------------
    def _write_error_limit(self) -> tuple[int, str, list[str]]:
        """Run `splits` once on a scratch copy: the sizes of its outputs, in the order it writes them,
        give a file-size limit that passes the first outputs and stops a later one half-way."""
        scratch = self.data_copy("splits-scratch")
        proc = self.stage("splits", "--data-dir", str(scratch), *SPLIT_FRACS)
        if proc.returncode != 0:
            raise RuntimeError(f"splits on a scratch copy failed: {proc.stderr[-800:]}")
        order = ["train.parquet", "val.parquet", "test.parquet", "vocab.parquet", "splits_meta.json"]
        sizes = [(scratch / "splits" / name).stat().st_size for name in order]
        for i in range(1, len(order)):
            if sizes[i] > max(sizes[:i]):
                limit = (max(sizes[:i]) + sizes[i]) // 2
                return limit, order[i], order[:i]
        return sizes[0] // 2, order[0], []

    def write_error(self) -> None:
        result = self.result
        started = time.perf_counter()
        limit, failing, complete = self._write_error_limit()
        data_dir = self.data_copy("splits-write-error")
        before = self.snapshot(data_dir)
        log.info("  splits on a scratch copy: %.0f s; file-size limit %d bytes", time.perf_counter() - started, limit)
        started = time.perf_counter()
        server = self.ws.mlflow_server()
        log.info("  mlflow server up in %.0f s", time.perf_counter() - started)
        try:
            proc = self.stage("splits", "--data-dir", str(data_dir), *SPLIT_FRACS, env=self.env(server.uri),
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        finally:
            server.stop()
        runs = self.stage_runs("splits", data_dir=str(data_dir))
        error = runs[0].data.tags.get("error", "") if runs else ""
        result.check("splits with a write error part-way exits non-zero and its run is FAILED with the error",
                     proc.returncode != 0 and runs and runs[0].info.status == "FAILED" and "too large" in error.lower(),
                     f"exit {proc.returncode}, runs {[r.info.status for r in runs]}, error tag {error[:160]!r}")
        self.check_outputs_intact("write error", data_dir, before)
        left = self.temporaries(data_dir)
        result.check("write error: no temporary is left behind", not left, f"left: {left[:5]}")

        proc = self.stage("splits", "--data-dir", str(data_dir), *SPLIT_FRACS)
        scratch = self.work / "splits-scratch" / "splits"
        same = all(pd.read_parquet(data_dir / "splits" / n).equals(pd.read_parquet(scratch / n))
                   for n in ("train.parquet", "val.parquet", "test.parquet", "vocab.parquet"))
        runs = self.stage_runs("splits", data_dir=str(data_dir))
        result.check("write error: a rerun of splits succeeds and writes what a clean run writes",
                     proc.returncode == 0 and runs[0].info.status == "FINISHED" and same,
                     f"exit {proc.returncode}, same outputs {same} {proc.stderr[-400:] if proc.returncode else ''}")
        result.figure("write error in", f"{failing} ({len(complete)} outputs written before it)")

    # -- b2. `data` killed while its events file is half-written -------------------------------------
    def killed_write(self) -> None:
        result = self.result
        events = pd.read_parquet(self.ws.data_dir / "raw" / "events.parquet")
        copies = -(-CSV_ROWS.get(self.ws.profile.size, CSV_ROWS["tiny"]) // len(events))
        frames = []
        for i in range(copies):   # more listeners with the same habits: a file big enough to catch mid-write
            f = events.copy()
            f["user_id"] = f["user_id"].astype(str) + f"-{i}"
            frames.append(f)
        big = pd.concat(frames, ignore_index=True)
        big["ts"] = big["ts"].astype("int64") // 10**9
        source = self.work / "plays.csv"
        big.to_csv(source, index=False)

        data_dir = self.data_copy("data-killed-write")
        before = self.snapshot(data_dir)
        args = ["--source", str(source), "--data-dir", str(data_dir)]
        log_path = self.work / "data-killed.log"
        with log_path.open("w") as out:
            process = subprocess.Popen(self.command("data", *args), cwd=REPO, env=self.env(), stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        caught = None
        try:
            deadline = time.monotonic() + 300
            while process.poll() is None and time.monotonic() < deadline:
                partial = [p for p in data_dir.glob(".raw.tmp.*/*") if p.stat().st_size > 0]
                if partial:
                    os.killpg(process.pid, signal.SIGKILL)
                    caught = partial[0]
                    break
                time.sleep(0.002)
        finally:
            if process.poll() is None and caught is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        result.check("data was SIGKILLed with its output half-written", caught is not None and process.returncode == -9,
                     f"exit {process.returncode}, partial file {caught.name if caught else None} "
                     f"({caught.stat().st_size if caught and caught.exists() else 0} bytes)")
        self.check_outputs_intact("SIGKILL mid-write", data_dir, before)
        left_by_kill = self.temporaries(data_dir)
        killed_runs = self.stage_runs("data", data_dir=str(data_dir))
        status_after_kill = killed_runs[0].info.status if killed_runs else "none"

        proc = self.stage("data", *args)
        runs = self.stage_runs("data", data_dir=str(data_dir))
        rows = len(pd.read_parquet(data_dir / "raw" / "events.parquet")) if proc.returncode == 0 else -1
        result.check("SIGKILL mid-write: a rerun of data succeeds with every row",
                     proc.returncode == 0 and runs[0].info.status == "FINISHED" and rows == len(big),
                     f"exit {proc.returncode}, {rows} of {len(big)} rows {proc.stderr[-400:] if proc.returncode else ''}")
        left = self.temporaries(data_dir)
        result.check("SIGKILL mid-write: the rerun removes what the killed writer left", bool(left_by_kill) and not left,
                     f"left by the kill: {left_by_kill[:3]}, after the rerun: {left[:3]}")
        killed = self.client.get_run(killed_runs[0].info.run_id) if killed_runs else None
        result.check("SIGKILL mid-write: the killed run, left RUNNING, is ended as KILLED by the rerun",
                     killed is not None and status_after_kill == "RUNNING" and killed.info.status == "KILLED",
                     f"{status_after_kill} after the kill, {killed.info.status if killed else None} after the rerun")
        result.figure("input rows (killed write)", len(big))

    # -- c. bad input files -----------------------------------------------------------------------------
    def bad_inputs(self) -> None:
        result = self.result
        good = "".join(f"u{i % 7},t{i % 50},{1_700_000_000 + 60 * i}\n" for i in range(200))
        header, n = "user_id,track_id,ts\n", 202    # the bad line comes after 200 good ones
        cases = {   # file name -> (bytes, the line the message must name, or None)
            "too-many-fields.csv": ((header + good + "u1,t1,1700000000,extra\n").encode(), n),
            "too-few-fields.tsv": ((header + good).replace(",", "\t").encode() + b"u1\tt1\n", n),
            "bad-time.csv": ((header + good + "u1,t1,yesterday\n").encode(), n),
            "not-utf8.csv": ((header + good).encode() + "u1,caf\u00e9,1700000000\n".encode("latin-1"), n),
            "empty.csv": (b"", None),
        }
        data_dir = self.data_copy("data-bad-inputs")
        before = self.snapshot(data_dir)
        inputs = self.work / "bad-inputs"
        inputs.mkdir()
        processes = {}
        for name, (content, _) in cases.items():
            (inputs / name).write_bytes(content)
            processes[name] = subprocess.Popen(
                self.command("data", "--source", str(inputs / name), "--data-dir", str(data_dir)), cwd=REPO,
                env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        refused = 0
        for name, (_, line) in cases.items():
            out, err = processes[name].communicate(timeout=300)
            runs = self.stage_runs("data", source=str(inputs / name))
            where = f"{name}, line {line}:" if line else f"{name}:"
            tag = runs[0].data.tags.get("error", "") if runs else ""
            ok = (processes[name].returncode == 2 and where in err and "Traceback" not in err + out
                  and len(err.strip().splitlines()) == 1 and runs and runs[0].info.status == "FAILED" and where in tag)
            refused += ok
            result.check(f"bad input {name}: exit 2, file and line named, no traceback, run FAILED", ok,
                         f"exit {processes[name].returncode}, stderr {err.strip()[-240:]!r}, "
                         f"runs {[r.info.status for r in runs]}")
        after = self.snapshot(data_dir)
        result.check("bad inputs: nothing written to data_dir", after == before,
                     f"{len(set(after) ^ set(before))} paths differ" if after != before else "unchanged")
        result.figure("bad inputs refused", f"{refused}/{len(cases)}")
