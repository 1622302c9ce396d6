"""deploy/*.Dockerfile: they parse, what they copy exists, and the API image's command serves.

No Docker engine runs here. The Dockerfiles are parsed with dockerfile-parse; every COPY source
must exist in the repository and pass the Dockerfile's own .dockerignore; the commands must name
modules, files and MLproject entry points that exist. The API image's CMD is then run as it is,
on this machine, from the repository root (the image's /app has the same layout) with the image's
ENV, on a free loopback port and with no reachable model: the service must come up, answer
/healthz (model_loaded false), /readyz (503) and /metrics, pass the image's HEALTHCHECK command,
and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from playlistai.config import default_web_concurrency

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILES = {"api": DEPLOY / "api.Dockerfile", "train": DEPLOY / "train.Dockerfile"}
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "cmake", "python3-dev", "libc6-dev")


def parse(name: str) -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILES[name]), cache_content=True)


def stages(dfp: DockerfileParser) -> list[list[dict]]:
    out: list[list[dict]] = []
    for ins in dfp.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def ignore_rules(name: str) -> list[tuple[bool, str]]:
    path = Path(str(DOCKERFILES[name]) + ".dockerignore")
    assert path.is_file(), f"{path.name}: the build context is the repository root, keep .venv and data out"
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def sent_to_builder(rules, rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    included = True
    for negate, pattern in rules:
        if fnmatch.fnmatch(rel, pattern) or rel.startswith(pattern + "/") or fnmatch.fnmatch(rel, f"**/{pattern}"):
            included = negate
    return included


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_parses_into_a_slim_python_311_multistage_build(name):
    dfp = parse(name)
    assert dfp.is_multistage
    for image in dfp.parent_images:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), image
    final = stages(dfp)[-1]
    user = [i["value"] for i in final if i["instruction"] == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "the final stage runs as a non-root user"
    for ins in final:
        if ins["instruction"] == "RUN":
            assert not any(re.search(rf"\b{re.escape(t)}\b", ins["value"]) for t in BUILD_TOOLS), ins["value"]
        if ins["instruction"] == "COPY" and "--from=" in ins["value"]:
            assert ins["value"].split()[1:] == ["/opt/venv", "/opt/venv"], "only the venv leaves the build stage"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_installs_like_make_setup(name):
    """torch pinned first (CPU wheels), then the package from pyproject.toml."""
    runs = [i["value"] for i in stages(parse(name))[0] if i["instruction"] == "RUN"]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch"))
    torch_run = next(i for i, r in enumerate(runs) if torch_pin in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_run]
    pkg_run = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_run < pkg_run


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_in_the_build_context(name):
    rules = ignore_rules(name)
    copies = [i["value"] for i in parse(name).structure if i["instruction"] == "COPY"]
    assert copies
    for value in copies:
        parts = shlex.split(value)
        if any(p.startswith("--from=") for p in parts):
            continue
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"{name}: COPY {src}: no such path in the repository"
            assert sent_to_builder(rules, src.rstrip("/")), f"{name}: COPY {src} is excluded by the .dockerignore"
    assert not sent_to_builder(rules, ".venv") and not sent_to_builder(rules, "data")
    assert not sent_to_builder(rules, "mlflow.db")


def test_api_image_command_and_healthcheck_name_existing_things():
    dfp = parse("api")
    cmd = json.loads(dfp.cmd)
    assert cmd[0] == "gunicorn"
    app_ref = next(a for a in cmd[1:] if ":" in a)
    module, attr = app_ref.split(":")
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()
    assert re.search(rf"^{attr}\s*=", (REPO / (module.replace(".", "/") + ".py")).read_text(), re.M)
    conf = cmd[cmd.index("-c") + 1]
    assert (REPO / conf).is_file()
    copied = [shlex.split(i["value"])[0] for i in stages(dfp)[-1] if i["instruction"] == "COPY"]
    assert module.split(".")[0] in copied and conf.split("/")[0] in copied
    env = dfp.envs
    assert int(env["API_PORT"]) == 8088
    assert [i["value"] for i in stages(dfp)[-1] if i["instruction"] == "EXPOSE"] == [env["API_PORT"]]
    assert "/healthz" in next(i["value"] for i in dfp.structure if i["instruction"] == "HEALTHCHECK")


def test_train_image_command_runs_the_mlflow_project():
    dfp = parse("train")
    cmd = json.loads(dfp.cmd)
    assert cmd[:2] == ["bash", "-c"]
    steps = [shlex.split(s) for s in cmd[2].split("&&")]
    assert steps[0] == ["python", "-m", "playlistai.tracking"]
    entry = steps[1][steps[1].index("-e") + 1]
    assert entry in yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    workdir = [i["value"] for i in stages(dfp)[-1] if i["instruction"] == "WORKDIR"][-1]
    copied = {p for i in stages(dfp)[-1] if i["instruction"] == "COPY" and "--from" not in i["value"]
              for p in shlex.split(i["value"])[:-1]}
    assert workdir == "/app" and {"MLproject", "conda.yaml", "entrypoints"} <= copied
    # every module an MLproject entry point runs is in the image
    for name, e in yaml.safe_load((REPO / "MLproject").read_text())["entry_points"].items():
        top = e["command"].split("python -m ")[1].split()[0].split(".")[0]
        assert top in copied or top == "playlistai", f"{name}: {top} is not copied into the image"


def _get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _redis_url() -> str | None:
    try:
        import redis

        redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=0.5).ping()
        return "redis://127.0.0.1:6379/0"
    except Exception:
        return None


@pytest.mark.integration
def test_api_image_command_serves_when_run_directly(tmp_path, free_port, subprocess_env):
    dfp = parse("api")
    cmd = json.loads(dfp.cmd)
    port, closed = free_port(), free_port()
    redis_url = _redis_url()
    env = {**subprocess_env, **{k: v for k, v in dfp.envs.items() if k != "PATH"}}
    for key in ("MODEL_URI", "ADMIN_TOKEN", "USE_FAISS", "MLFLOW_RUN_ID"):
        env.pop(key, None)
    env.update({
        "API_HOST": "127.0.0.1",  # the image binds 0.0.0.0; here only loopback
        "API_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}",  # a registry nobody answers
        "MODEL_URI": str(tmp_path / "no-model-here"),
        "REDIS_URL": redis_url or f"redis://127.0.0.1:{closed}/0",
    })
    exe = Path(sys.executable).parent / cmd[0]
    proc = subprocess.Popen([str(exe), *cmd[1:]], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the API command exited:\n{proc.stdout.read()}"
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                health = (status, json.loads(body))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert health, "no answer on /healthz within 60 s"
        status, body = health
        assert status == 200 and body["model_loaded"] is False and body["reason"]
        assert body["cache_connected"] is bool(redis_url)
        status, _ = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503
        status, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"# TYPE" in metrics
        status, body = _request_continue(port)
        assert status == 503 and "detail" in json.loads(body)

        healthcheck = next(i["value"] for i in dfp.structure if i["instruction"] == "HEALTHCHECK")
        probe = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
        assert probe[0] == "python"
        check = subprocess.run([sys.executable, *probe[1:]], env=env, capture_output=True, timeout=10)
        assert check.returncode == 0, check.stderr

        # the image pins no WEB_CONCURRENCY: a worker per core this process may run on
        assert "WEB_CONCURRENCY" not in dfp.envs
        workers = int(env.get("WEB_CONCURRENCY") or default_web_concurrency())
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == workers, f"{workers} uvicorn workers expected, got {children}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"the API did not stop within 30 s of SIGTERM:\n{out}")
    assert proc.returncode == 0, out


def _request_continue(port: int) -> tuple[int, bytes]:
    body = json.dumps({"tracks": ["t1", "t2"], "k": 5}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/continue", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
