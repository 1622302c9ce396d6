"""The reliability suite's scenarios, short, in `make test` (`make reliability` runs them in full).

One `python -m reliability --profile short` process runs every scenario against real components
(gunicorn, Redis, MLflow store and server, the entry points); each test below then reads the result
of one scenario, so that a failure names the scenario and the checks that did not hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reliability.core import Check, ScenarioResult, summary_line, write_report
from reliability.scenarios import MODULES

# the first test also waits for the whole short suite (about 5 minutes on a quiet 2-core machine)
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    results_file, report = root / "results.json", root / "RELIABILITY.md"
    proc = subprocess.run(
        [sys.executable, "-m", "reliability", "--profile", "short", "--data-root", str(root / "data"),
         "--report", str(report), "--json", str(results_file)],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    assert results_file.exists(), f"the suite did not finish (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
    results = {r["key"]: r for r in json.loads(results_file.read_text())}
    return {"proc": proc, "results": results, "report": report.read_text(), "log": proc.stderr}


@pytest.mark.parametrize("key", [str(i + 1) for i in range(len(MODULES))],
                         ids=MODULES)
def test_scenario_passes_short(short_run, key):
    result = short_run["results"][key]
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert result["passed"], (f"scenario {key}. {result['title']} failed: {failed} error={result['error']}\n"
                              f"{short_run['log'][-4000:]}")
    assert result["checks"] and result["figures"]


def test_the_suite_ends_with_the_summary_and_writes_the_report(short_run):
    proc, results = short_run["proc"], short_run["results"]
    passed = sum(r["passed"] for r in results.values())
    last_line = proc.stdout.strip().splitlines()[-1]
    assert last_line == f"{passed} passed, {len(results) - passed} failed"
    assert proc.returncode == (0 if passed == len(results) else 1)
    assert "Machine: " in short_run["report"] and "| scenario | result | figures |" in short_run["report"]


def test_summary_and_report_keep_the_introduction(tmp_path):
    ok = ScenarioResult("1", "one", checks=[Check("a", True)])
    bad = ScenarioResult("2", "two", checks=[Check("a", True), Check("b", False, "why")])
    assert summary_line([ok, bad]) == "1 passed, 1 failed"
    assert not ScenarioResult("3", "no checks").passed          # a scenario that checked nothing did not pass
    path = tmp_path / "R.md"
    path.write_text("# Reliability\n\nhand-written intro\n\n<!-- results -->\n\nold results\n")
    write_report(path, "new results")
    text = path.read_text()
    assert "hand-written intro" in text and "new results" in text and "old results" not in text


def test_an_unknown_scenario_is_refused_with_a_message():
    proc = subprocess.run([sys.executable, "-m", "reliability", "--only", "nope", "--report", ""],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown scenario(s): nope" in proc.stderr and "Traceback" not in proc.stderr
