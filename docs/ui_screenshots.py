"""Screenshots of the MLflow UI for the docs, taken in headless Chromium, each checked for what it shows.

    make ui-screenshots                                  # docs/mlflow-runs.png, -compare.png, -registry.png
    .venv/bin/python docs/ui_screenshots.py --out /tmp/shots
    MLFLOW_TRACKING_URI=sqlite:////path/mlflow.db .venv/bin/python docs/ui_screenshots.py

The store is the project's (`MLFLOW_TRACKING_URI` of the environment, `.env` or the default
`sqlite:///mlflow.db`, as `python -m playlistai.tracking --shell` prints it). In it the script finds
the experiment `MLFLOW_EXPERIMENT_NAME`, the latest finished `train` runs of SASRec and GRU4Rec (tags
`stage=train`, `model_family`) and the registered model `REGISTERED_MODEL_NAME` with its alias
`MODEL_ALIAS`; one missing stops it before any browser starts, with exit status 2 and a line saying
what is missing (`run make demo first`). Then it starts `mlflow server` on a free local port against
that store (a store that is itself a server, `http://...`, is opened as it is) and saves:

- `mlflow-runs.png`: the experiment's runs, the `main` run of those trainings expanded into its
  stages, with the headline metrics as columns;
- `mlflow-compare.png`: the two training runs side by side: the params that differ, the metrics, the
  parallel-coordinates plot on the validation metrics the model is chosen by;
- `mlflow-registry.png`: the registered model's versions with their aliases and tags (the gate's).

Each page is loaded until it shows what it must (the run names, the metric, the alias: inside the
picture, not merely somewhere in the page) and has stopped changing; a page that does not get there
within `--timeout` seconds fails the script (exit status 1), its last state saved to a file the
message names. Needs Chromium and its driver (Debian:
`apt-get install chromium chromium-driver`) and Selenium (the `dev` extra), nothing downloaded at run
time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the package of the repository
    sys.path.insert(0, str(ROOT))

MODELS = ("sasrec", "gru4rec")
# headline metrics shown as columns of the runs list (README "Registry", "By hand in the MLflow UI")
RUN_COLUMNS = ("best_val_ndcg_at_10", "best_val_recall_at_20", "test_ndcg_at_10", "test_recall_at_20")
# the axes of the comparison's parallel-coordinates plot: what `main` chooses the model on
PLOT_METRICS = ("best_val_recall_at_20", "best_val_ndcg_at_10")
# the UI keeps the state of an experiment's runs table here (MLflow 3); what is written is only a start,
# what counts is the check of the rendered text
RUNS_STATE_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
# MLflow's assistant panel opens by itself on a first visit to a local server and covers a third of the page
UI_PREFERENCES = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}
SPINNER_SELECTOR = '[role="progressbar"], [class*="spinner" i], [data-testid*="spinner" i], [class*="skeleton" i]'


class StoreNotReady(LookupError):
    """The store lacks what the screenshots show; the message says what and what to run."""


class PageNotReady(RuntimeError):
    """A page did not show what it must within the time allowed."""


@dataclass
class Targets:
    tracking_uri: str
    experiment_id: str
    experiment_name: str
    train_runs: dict[str, tuple[str, str]]  # model -> (run id, run name)
    parent_runs: list[str]  # the `main` runs the training runs belong to
    model_name: str
    alias: str
    alias_version: str


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store, None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if not path or path == ":memory:" or path.startswith("file:") else Path(path)


def find_targets(tracking_uri: str, experiment_name: str, model_name: str, alias: str) -> Targets:
    """What the screenshots show, read from the store; StoreNotReady when something is missing."""
    import mlflow
    from mlflow.exceptions import MlflowException

    hint = "run `make demo` (or `make demo-quick`) first"
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store there
        raise StoreNotReady(f"no tracking store at {db} ({tracking_uri}): {hint}")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise StoreNotReady(f"no experiment '{experiment_name}' in the tracking store {tracking_uri}: {hint}")
    train_runs: dict[str, tuple[str, str]] = {}
    parents: list[str] = []
    for model in MODELS:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.stage = 'train' and tags.model_family = '{model}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise StoreNotReady(f"no finished `train` run of {model} in experiment '{experiment_name}' "
                                f"of {tracking_uri}: {hint}")
        run = runs[0]
        train_runs[model] = (run.info.run_id, run.info.run_name or run.info.run_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and parent not in parents:
            parents.append(parent)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        raise StoreNotReady(f"no registered model '{model_name}' with the alias '{alias}' in {tracking_uri}: "
                            f"{hint}") from None
    return Targets(tracking_uri, experiment.experiment_id, experiment_name, train_runs, parents,
                   model_name, alias, str(version.version))


# -- the MLflow UI ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode} before it served {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {url}/health within {timeout:.0f} s")


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, timeout: float, log_path: Path) -> Iterator[str]:
    """The base URL of a UI on the store: the server itself for an http(s) store, else `mlflow server`
    started on a free local port (and stopped on exit)."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/")
        wait_healthy(url, None, timeout)
        yield url
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
                                start_new_session=True)
    try:
        try:
            wait_healthy(url, proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (its log: {log_path})") from None
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def chromium(binary: str, driver: str, width: int, height: int) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, what in ((binary, "--chromium"), (driver, "--chromedriver")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found ({what}); Debian: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--force-device-scale-factor=1", "--lang=en-US", f"--window-size={width},{height}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


# the text nodes holding `wanted` strings that the screenshot shows: inside the viewport and not covered
# (the element at the centre of the text is the text's own, or one of its children or parents)
VISIBLE_JS = """
const [wanted] = arguments;
const found = new Set();
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const range = document.createRange();
while (walker.nextNode() && found.size < wanted.length) {
  const node = walker.currentNode;
  const hits = wanted.filter(w => !found.has(w) && node.textContent.includes(w));
  if (!hits.length) continue;
  range.selectNodeContents(node);
  for (const r of range.getClientRects()) {
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    if (r.width <= 0 || x < 0 || y < 0 || x >= window.innerWidth || y >= window.innerHeight) continue;
    const top = document.elementFromPoint(x, y), own = node.parentElement;
    if (top && (top === own || own.contains(top) || top.contains(own))) { hits.forEach(w => found.add(w)); break; }
  }
}
return wanted.filter(w => !found.has(w));
"""
# how much taller the page would need to be to show all of its main scrolling area
OVERFLOW_JS = """
let extra = document.documentElement.scrollHeight - window.innerHeight;
for (const e of document.querySelectorAll('*')) {
  const s = getComputedStyle(e);
  if ((s.overflowY === 'auto' || s.overflowY === 'scroll') && e.clientHeight > window.innerHeight / 2)
    extra = Math.max(extra, e.scrollHeight - e.clientHeight);
}
return extra;
"""


@dataclass
class Page:
    file: str
    url: str
    expected: list[str]  # text the screenshot must show, not merely the page hold
    height: int  # of the viewport
    fit_height: int = 0  # when set: grow the viewport to the page's content, up to this height
    arrange: Callable | None = None  # called once the page settled: clicks that set up the view
    check: Callable | None = None  # a last look at the page; returns what is wrong, or None


def settle(browser, expected: list[str], timeout: float, quiet_s: float = 2.0) -> None:
    """Wait until the page shows every `expected` string, no spinner, and has not changed for `quiet_s`
    seconds; PageNotReady names what is still missing."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    missing = expected
    while time.monotonic() < deadline:
        text = browser.execute_script("return document.body ? document.body.innerText : ''")
        busy = browser.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).some(e => e.offsetParent !== null)",
            SPINNER_SELECTOR)
        missing = browser.execute_script(VISIBLE_JS, expected)
        state = (text, busy, tuple(missing))
        if state != last:
            last, since = state, time.monotonic()
        elif not missing and not busy and time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.25)
    what = f"it does not show {', '.join(repr(s) for s in missing)}" if missing else "it kept changing or loading"
    raise PageNotReady(f"{browser.current_url}: after {timeout:.0f} s {what}")


def set_viewport(browser, width: int, height: int) -> None:
    """The page's size exactly (a window size would include the browser's own bars)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def shoot(browser, page: Page, path: Path, width: int, timeout: float, failed_dir: Path) -> None:
    from selenium.common.exceptions import WebDriverException

    set_viewport(browser, width, page.height)
    browser.get(page.url)
    try:
        settle(browser, page.expected, timeout)
        if page.arrange:
            page.arrange(browser, timeout)
            settle(browser, page.expected, timeout)
        if page.fit_height:
            extra = browser.execute_script(OVERFLOW_JS)
            if extra > 0:
                set_viewport(browser, width, min(page.height + extra + 16, page.fit_height))
                settle(browser, page.expected, timeout)
        # the pointer off the page's controls: a button or heading under it would show its hover colour
        browser.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": width - 2, "y": 2})
        problem = page.check(browser) if page.check else None
        if problem:
            raise PageNotReady(f"{browser.current_url}: {problem}")
    except (PageNotReady, WebDriverException) as exc:
        failed = failed_dir / f"{path.stem}.failed.png"
        browser.save_screenshot(str(failed))
        reason = exc.msg if isinstance(exc, WebDriverException) else exc
        raise PageNotReady(f"{path.name}: {reason}; what it showed: {failed}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    if not browser.save_screenshot(str(tmp)):
        raise PageNotReady(f"{path.name}: the browser saved no screenshot")
    tmp.replace(path)


def prepare_ui(browser, base: str, targets: Targets) -> None:
    """Before any page: the UI's preferences in its local storage (the assistant panel closed, the
    `main` runs expanded into their stages, the headline metrics as columns). Written from a page of
    the server that is not the UI, so that no starting UI writes its own over them."""
    browser.get(f"{base}/health")
    key = RUNS_STATE_KEY.format(experiment_id=targets.experiment_id)
    columns = [f"metrics.`{m}`" for m in RUN_COLUMNS] + ["tags.`stage`"]
    state = {
        "runsExpanded": {run_id: True for run_id in targets.parent_runs},
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns],
        "columnWidths": {c: 180 for c in columns if c.startswith("metrics.")},
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }
    browser.execute_script(
        """const [prefs, key, state] = arguments;
        for (const [k, v] of Object.entries(prefs)) window.localStorage.setItem(k, v);
        const old = JSON.parse(window.localStorage.getItem(key) || '{}');
        window.localStorage.setItem(key, JSON.stringify(Object.assign(old, state)));""",
        UI_PREFERENCES, key, state)


def arrange_comparison(browser, timeout: float) -> None:
    """The comparison as the docs show it: only the params that differ, and the parallel-coordinates
    plot on the validation metrics the models are chosen by (the UI picks an arbitrary metric)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    switch = browser.find_element(By.CSS_SELECTOR, '[role="switch"][aria-label^="Parameters"]')
    if switch.get_attribute("aria-checked") != "true":
        switch.click()
    box = browser.find_element(By.XPATH, '//*[normalize-space(text())="Metrics:"]/following::input[@role="combobox"][1]')
    selector = box.find_element(By.XPATH, './ancestor::div[contains(@class, "select-selector")][1]')
    chip_css = '[class*="select-selection-item"]:has(> [class*="item-remove"])'
    shown = {chip.text.strip() for chip in selector.find_elements(By.CSS_SELECTOR, chip_css)}
    selector.click()
    for metric in PLOT_METRICS:
        if metric in shown:  # Enter on a selected option would take it out
            continue
        box.send_keys(metric)
        option = f'[class*="select-item-option"][title="{metric}"]'
        deadline = time.monotonic() + min(timeout, 10)
        while not any(o.is_displayed() for o in browser.find_elements(By.CSS_SELECTOR, option)):
            if time.monotonic() > deadline:
                raise PageNotReady(f"the plot's metric list does not offer {metric}")
            time.sleep(0.2)
        box.send_keys(Keys.ENTER)
    for chip in selector.find_elements(By.CSS_SELECTOR, chip_css):
        if chip.text.strip() not in PLOT_METRICS:
            chip.find_element(By.CSS_SELECTOR, '[class*="item-remove"]').click()
    box.send_keys(Keys.ESCAPE)
    # a click on the title takes the focus (and its outline) off the select
    browser.find_element(By.XPATH, '//h2[starts-with(normalize-space(.), "Comparing")] | //h1[starts-with('
                         'normalize-space(.), "Comparing")]').click()


def arrange_runs(browser, timeout: float) -> None:
    """The experiment's description unfolded (folded, its second line shows cut in half)."""
    from selenium.webdriver.common.by import By

    buttons = browser.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.experiment.metadata_editor.expand_button"]')
    if buttons:
        buttons[0].click()


def check_comparison(browser) -> str | None:
    axes = browser.execute_script(
        "return Array.from(document.querySelectorAll('text.axis-title')).map(e => e.textContent)")
    if not set(PLOT_METRICS) <= set(axes):
        return f"the parallel-coordinates plot shows {axes}, not {list(PLOT_METRICS)}"
    return None


def pages(base: str, targets: Targets, height: int) -> list[Page]:
    eid = targets.experiment_id
    run_ids = [run_id for run_id, _ in targets.train_runs.values()]
    run_names = [name for _, name in targets.train_runs.values()]
    ml = "workflowType=machine_learning"  # MLflow 3's side bar for model training, not GenAI
    compare = f"runs={json.dumps(run_ids, separators=(',', ':'))}&experiments={json.dumps([eid])}"
    return [
        Page("mlflow-runs.png", f"{base}/#/experiments/{eid}/runs?{ml}", [*run_names, RUN_COLUMNS[0]], height,
             arrange=arrange_runs),
        Page("mlflow-compare.png", f"{base}/#/compare-runs?{compare}&{ml}", [*run_names, "best_val_ndcg_at_10"],
             2 * height, arrange=arrange_comparison, check=check_comparison),
        Page("mlflow-registry.png", f"{base}/#/models/{targets.model_name}?{ml}",
             [f"Version {targets.alias_version}", targets.alias, "gate_decision"], height, fit_height=3 * height),
    ]


def take(targets: Targets, out: Path, args: argparse.Namespace) -> list[Path]:
    work = Path(tempfile.mkdtemp(prefix="ui-screenshots-"))
    saved = []
    with mlflow_ui(targets.tracking_uri, args.timeout, work / "mlflow-server.log") as base, \
            chromium(args.chromium, args.chromedriver, args.width, args.height) as browser:
        prepare_ui(browser, base, targets)
        for page in pages(base, targets, args.height):
            path = out / page.file
            shoot(browser, page, path, args.width, args.timeout, work)
            print(f"{path}: {page.url}")
            saved.append(path)
    shutil.rmtree(work, ignore_errors=True)  # kept when a page failed: its picture and the server's log
    return saved


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException

    from playlistai.config import get_settings

    parser = argparse.ArgumentParser(prog="python docs/ui_screenshots.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of the PNGs (default: docs/)")
    parser.add_argument("--tracking-uri", help="the store (default: the project's, MLFLOW_TRACKING_URI)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000, help="window height; the comparison gets twice that")
    parser.add_argument("--timeout", type=float, default=90, help="seconds the server and each page may take")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args(argv)
    uri = args.tracking_uri
    try:
        from playlistai.tracking import tracking_uri

        settings = get_settings()
        uri = args.tracking_uri or tracking_uri(settings)
        targets = find_targets(uri, settings.MLFLOW_EXPERIMENT_NAME, settings.REGISTERED_MODEL_NAME,
                               settings.MODEL_ALIAS)
    except (StoreNotReady, ValueError) as exc:
        print(f"error: ui-screenshots: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:  # a server that does not answer, a database it cannot read
        print(f"error: ui-screenshots: the tracking store {uri}: {exc.message}", file=sys.stderr)
        return 2
    try:
        from selenium.common.exceptions import WebDriverException
    except ImportError:
        print("error: ui-screenshots: Selenium is missing: .venv/bin/pip install -e '.[dev]'", file=sys.stderr)
        return 1
    try:
        take(targets, args.out, args)
    except (PageNotReady, RuntimeError, FileNotFoundError) as exc:
        print(f"error: ui-screenshots: {exc}", file=sys.stderr)
        return 1
    except WebDriverException as exc:  # Chromium or its driver would not start or went away
        print(f"error: ui-screenshots: the browser: {exc.msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
