"""What a reliability scenario returns, how the suite runs them, and how the results are reported.

A scenario is a function `run(ws: Workspace) -> ScenarioResult` in `reliability/scenarios/`. It
starts the real components it needs (reliability/components.py), drives them, and records:
- checks: each a property the service must hold, with the measured value that decided it;
- figures: the numbers worth a row in RELIABILITY.md (latencies, counts, seconds).

A scenario passes when every check holds. An exception inside a scenario is a failure with its
message, never a crash of the suite.
"""

from __future__ import annotations

import logging
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("reliability")


@dataclass(frozen=True)
class Profile:
    """How long and how hard each scenario runs. `full` is `make reliability`; `short` runs in `make test`."""

    name: str
    size: str                     # synthetic catalog of the served models
    model_d: int                  # the served models' width (the product default is 256)
    sustained_s: float            # scenario 1: length of the sustained-load phase
    warmup_s: float               # scenario 1: discarded before the memory baseline
    rate_rps: float               # target request rate of the open-loop load generator
    clients: int                  # load-generator threads (each keeps one connection)
    fault_s: float                # how long a fault (Redis down, Redis slow, MLflow down) lasts
    poll_s: float                 # MODEL_POLL_S of the API under test
    fuzz_requests: int            # scenario 6: generated bad requests
    train_epochs: int             # scenario 7: epochs of the training run that is killed
    workers: int = 2              # gunicorn workers
    enforce_latency: bool = True  # latency bounds are checked only in the full run (a benchmark, not a unit test)


PROFILES = {
    "full": Profile("full", size="default", model_d=256, sustained_s=300, warmup_s=60, rate_rps=200, clients=16,
                    fault_s=10, poll_s=2.0, fuzz_requests=10_000, train_epochs=4),
    "short": Profile("short", size="tiny", model_d=32, sustained_s=12, warmup_s=4, rate_rps=60, clients=4,
                     fault_s=3, poll_s=1.0, fuzz_requests=1_000, train_epochs=3, enforce_latency=False),
}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    key: str
    title: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        log.info("  [%s] %s %s", "ok" if ok else "FAIL", name, detail)
        return bool(ok)

    def figure(self, name: str, value) -> None:
        self.figures[name] = value

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def as_dict(self) -> dict:
        return {"key": self.key, "title": self.title, "passed": self.passed, "error": self.error,
                "duration_s": self.duration_s, "figures": self.figures,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks]}

    def failures(self) -> list[str]:
        out = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        if self.error:
            out.append(f"error: {self.error}")
        return out


Scenario = Callable[..., ScenarioResult]


def run_scenario(key: str, title: str, body: Callable[[ScenarioResult], None]) -> ScenarioResult:
    """Run `body(result)`; an exception becomes the scenario's error, with the last frames logged."""
    result = ScenarioResult(key, title)
    started = time.perf_counter()
    log.info("== %s: %s", key, title)
    try:
        body(result)
    except Exception as exc:  # a scenario that breaks is a failed scenario, and the suite goes on
        result.error = f"{type(exc).__name__}: {exc}"
        log.error("%s raised:\n%s", key, traceback.format_exc(limit=8))
    result.duration_s = round(time.perf_counter() - started, 1)
    log.info("== %s %s in %.0f s", key, "passed" if result.passed else "FAILED", result.duration_s)
    return result


# -- the report ------------------------------------------------------------------------------------

def summary_line(results: list[ScenarioResult]) -> str:
    passed = sum(r.passed for r in results)
    return f"{passed} passed, {len(results) - passed} failed"


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def figures_table(results: list[ScenarioResult]) -> str:
    lines = ["| scenario | result | figures |", "| --- | --- | --- |"]
    for r in results:
        figures = "; ".join(f"{k} {_format(v)}" for k, v in r.figures.items()) or "-"
        lines.append(f"| {r.key}. {r.title} | {'pass' if r.passed else 'FAIL'} ({r.duration_s:.0f} s) | {figures} |")
    return "\n".join(lines)


def checks_section(results: list[ScenarioResult]) -> str:
    out = []
    for r in results:
        out.append(f"### {r.key}. {r.title}: {'pass' if r.passed else 'FAIL'}\n")
        for c in r.checks:
            out.append(f"- [{'x' if c.ok else ' '}] {c.name}" + (f" ({c.detail})" if c.detail else ""))
        if r.error:
            out.append(f"- [ ] the scenario ran to its end (it raised {r.error})")
        out.append("")
    return "\n".join(out)


def machine_description() -> str:
    import os

    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
        load = ", load average {:.1f}/{:.1f}/{:.1f} at the end".format(*os.getloadavg())
    except Exception:
        memory, load = "? GiB", ""
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}{load}"


def markdown_report(results: list[ScenarioResult], profile: Profile, command: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"## `{command}` ({profile.name} profile), {now}",
        "",
        f"Machine: {machine_description()}.",
        "",
        f"**{summary_line(results)}**",
        "",
        figures_table(results),
        "",
        checks_section(results),
    ])


RUN_HEADER = "## `"


def write_report(path: Path, report: str, marker: str = "<!-- results -->", replace_all: bool = True) -> None:
    """Replace everything after `marker` in `path` (the hand-written introduction above it stays).

    `replace_all=False` (a run of some scenarios only): replace only the section of an earlier run
    of the same command, or add one after the others; the sections of other runs stay as they were."""
    text = path.read_text() if path.exists() else f"# Reliability\n\n{marker}\n"
    head, _, results = text.partition(marker) if marker in text else (text.rstrip() + "\n\n", "", "")
    sections = [] if replace_all else _run_sections(results)
    header = report.strip().splitlines()[0] if report.strip() else ""
    key = _section_key(header)
    kept = [section for section in sections if _section_key(section.splitlines()[0]) != key]
    body = "\n\n".join([*(section.rstrip() for section in kept), report.rstrip()])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + marker + "\n\n" + body + "\n")
    tmp.replace(path)


def _run_sections(results: str) -> list[str]:
    sections: list[list[str]] = []
    for line in results.strip().splitlines():
        if line.startswith(RUN_HEADER) or not sections:
            sections.append([])
        sections[-1].append(line)
    return ["\n".join(lines) for lines in sections if lines and lines[0].startswith(RUN_HEADER)]


def _section_key(header: str) -> str:
    """A run's header without its date: `## `command` (profile)`."""
    return header.rsplit(",", 1)[0] if header.startswith(RUN_HEADER) else header
