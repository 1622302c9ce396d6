"""deploy/docker-compose.yml: valid Compose, commands that exist, ports and settings that agree.

No Docker engine runs here, so the file is checked statically: against the Compose specification
JSON schema that check-jsonschema ships (`--builtin-schema vendor.compose-spec`), and against the
repository (every command's module, file, MLproject entry point or CLI option exists; every env
name of a PlayListAI service is a Settings field and its value passes Settings' validation).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"

# services that run PlayListAI code (their env is Settings); the rest are stock images
APP_SERVICES = {"api", "trainer"}
# env names of PlayListAI containers that are read by a library, not by Settings
LIBRARY_ENV = {"PROMETHEUS_MULTIPROC_DIR"}  # prometheus-client's multiprocess mode
STACK = {"api", "redis", "mlflow", "postgres", "prometheus", "pushgateway", "grafana", "trainer"}


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def expand(value: str) -> str:
    """Compose interpolation with the defaults the file gives (`${X:-default}`)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def host_ports(service: dict, env: dict[str, str] | None = None) -> dict[int, int]:
    """container port -> host port, interpolated as Compose does with `env` (else the file's defaults)."""
    out = {}
    for p in service.get("ports", []):
        value = re.sub(r"\$\{([A-Z_]+):-([^}]*)\}", lambda m: (env or {}).get(m.group(1)) or m.group(2), str(p))
        parts = value.split(":")  # [ip:]host:container
        out[int(parts[-1])] = int(parts[-2] if len(parts) > 1 else parts[-1])
    return out


# published ports: the variable that sets each and its default, clear of the services a developer runs
# beside the stack (a local Redis, `mlflow ui`, `make demo`/`make api`, a local Prometheus and Pushgateway)
PUBLISHED = {"api": ("PLAYLISTAI_API_PORT", 8088, 18088), "mlflow": ("PLAYLISTAI_MLFLOW_PORT", 5000, 15000),
             "redis": ("PLAYLISTAI_REDIS_PORT", 6379, 16379),
             "prometheus": ("PLAYLISTAI_PROMETHEUS_PORT", 9090, 19090),
             "pushgateway": ("PLAYLISTAI_PUSHGATEWAY_PORT", 9091, 19091),
             "grafana": ("PLAYLISTAI_GRAFANA_PORT", 3000, 13000)}
LOCAL_PORTS = {6379, 5000, 8088, 9090, 9091}


def test_compose_file_validates_against_the_compose_spec_schema():
    proc = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path, compose):
    """The validator is live: a misspelt depends_on condition and an unknown key both fail."""
    broken = yaml.safe_load(yaml.safe_dump(compose))
    broken["services"]["api"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["trainer"]["restart_policy"] = "never"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    proc = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "service_ready" in proc.stdout + proc.stderr


def test_the_whole_stack_is_there(compose):
    assert set(compose["services"]) == STACK
    ports = {name: host_ports(s) for name, s in compose["services"].items() if s.get("ports")}
    assert ports == {name: {inside: default} for name, (_, inside, default) in PUBLISHED.items()}
    assert not set().union(*(p.values() for p in ports.values())) & LOCAL_PORTS, "a default clashes with a local service"


def test_published_ports_come_from_the_environment(compose):
    env = {var: str(40000 + i) for i, (var, _, _) in enumerate(PUBLISHED.values())}
    for name, (var, inside, _) in PUBLISHED.items():
        assert host_ports(compose["services"][name], env) == {inside: int(env[var])}, name


def test_make_up_prints_and_hands_compose_the_same_ports():
    """make's defaults are the Compose file's; a port set in the environment reaches both."""
    proc = subprocess.run(["make", "-n", "up"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PLAYLISTAI_MLFLOW_PORT": "25000"})
    assert proc.returncode == 0, proc.stderr
    assert "MLflow http://localhost:25000" in proc.stdout and "API http://localhost:18088" in proc.stdout
    compose_text = COMPOSE_FILE.read_text()
    makefile = (REPO / "Makefile").read_text()
    exported = makefile[makefile.index("\nexport PLAYLISTAI_"):].split("\n.PHONY")[0]
    for var, _, default in PUBLISHED.values():
        assert f"${{{var}:-{default}}}" in compose_text, var
        assert re.search(rf"^{var} \?= {default}$", makefile, re.M), var
        assert var in exported, f"make does not export {var} to docker compose"


def test_builds_use_the_repository_dockerfiles(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if not build:
            continue
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO, f"{name}: the build context is the repository root"
        assert (context / build["dockerfile"]).is_file(), name
    built = {s["build"]["dockerfile"] for s in compose["services"].values() if s.get("build")}
    assert built == {"deploy/api.Dockerfile", "deploy/train.Dockerfile"}


def bind_mounts(compose) -> dict[tuple[str, str], Path]:
    mounts = {}
    for name, service in compose["services"].items():
        for vol in service.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith("."):
                mounts[(name, target)] = (DEPLOY / source).resolve()
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
    return mounts


def test_bind_mounts_point_at_the_repository_monitoring_config(compose):
    """Prometheus and Grafana get the repository's monitoring config (monitoring/)."""
    mounts = bind_mounts(compose)
    assert mounts[("prometheus", "/etc/prometheus")] == REPO / "monitoring" / "prometheus"
    assert mounts[("grafana", "/etc/grafana/provisioning")] == REPO / "monitoring" / "grafana" / "provisioning"
    assert mounts[("grafana", "/var/lib/grafana/dashboards")] == REPO / "monitoring" / "grafana" / "dashboards"
    missing = [f"{svc}: {path.relative_to(REPO)}" for (svc, _), path in mounts.items() if not path.exists()]
    if missing:
        pytest.skip(f"monitoring config not in the repository yet: {missing}")


def test_prometheus_config_scrapes_the_compose_services(compose):
    """The mounted prometheus.yml reaches the API and the Pushgateway by their compose names."""
    config_path = REPO / "monitoring" / "prometheus" / "prometheus.yml"
    if not config_path.exists():
        pytest.skip("monitoring/prometheus/prometheus.yml not in the repository yet")
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["services"]["prometheus"]["command"]
    config = yaml.safe_load(config_path.read_text())
    targets = {t for job in config.get("scrape_configs", []) for sc in job.get("static_configs", [])
               for t in sc.get("targets", [])}
    assert "api:8088" in targets and "pushgateway:9091" in targets, targets
    for rule_file in config.get("rule_files", []):
        assert rule_file.startswith("/etc/prometheus/") or not rule_file.startswith("/"), rule_file
        rel = rule_file.removeprefix("/etc/prometheus/")
        assert list((REPO / "monitoring" / "prometheus").glob(rel)), f"rule file {rule_file} is not in the mount"


def test_app_service_env_names_are_settings_and_values_validate(compose, settings_fields, monkeypatch):
    from playlistai.config import load_settings

    for name in APP_SERVICES:
        env = {k: expand(v) for k, v in env_of(compose["services"][name]).items()}
        unknown = set(env) - settings_fields - LIBRARY_ENV
        assert not unknown, f"{name}: env names that Settings does not read: {sorted(unknown)}"
        for key in settings_fields:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            if key in settings_fields and value != "":
                monkeypatch.setenv(key, value)
        load_settings()  # raises SettingsError naming the key on a bad value


def test_env_example_and_settings_agree_with_the_compose_ports(compose):
    from playlistai.config import Settings

    example = dict(
        line.split("=", 1)[0:2]
        for line in (REPO / "env.example").read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    )
    port = Settings.model_fields["API_PORT"].default
    assert int(example["API_PORT"].split()[0]) == port == 8088
    api = compose["services"]["api"]
    assert int(env_of(api)["API_PORT"]) == port
    assert set(host_ports(api)) == {port}


def test_service_urls_point_at_services_of_the_stack(compose):
    services = compose["services"]
    mlflow_port = int(command_of(services["mlflow"])[command_of(services["mlflow"]).index("--port") + 1])
    redis_port = next(iter(host_ports(services["redis"])))
    for name in APP_SERVICES:
        env = env_of(services[name])
        tracking = urlparse(env["MLFLOW_TRACKING_URI"])
        assert (tracking.hostname, tracking.port) == ("mlflow", mlflow_port), name
        if "REDIS_URL" in env:
            redis = urlparse(env["REDIS_URL"])
            assert (redis.hostname, redis.port) == ("redis", redis_port), name
    backend = command_of(services["mlflow"])[command_of(services["mlflow"]).index("--backend-store-uri") + 1]
    pg = urlparse(backend)
    pg_env = env_of(services["postgres"])
    assert pg.scheme.startswith("postgresql") and pg.hostname == "postgres"
    assert (pg.username, pg.password, pg.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])


def test_mlflow_server_command_is_valid_for_the_installed_mlflow(compose):
    """The arguments parse with mlflow's own CLI definition (an unknown flag would fail here)."""
    from mlflow.cli import cli

    cmd = command_of(compose["services"]["mlflow"])
    assert cmd[:2] == ["mlflow", "server"]
    ctx = cli.commands["server"].make_context("server", cmd[2:])
    assert ctx.params["serve_artifacts"] is True
    assert ctx.params["host"] == "0.0.0.0"
    hosts = ctx.params["allowed_hosts"].split(",")
    assert "mlflow" in hosts and "mlflow:5000" in hosts, "the API and trainer reach it as mlflow:5000"
    # a browser on the host reaches it on whatever port PLAYLISTAI_MLFLOW_PORT publishes
    from mlflow.server.security_utils import is_allowed_host_header

    assert is_allowed_host_header(hosts, "localhost:15000") and is_allowed_host_header(hosts, "127.0.0.1:25000")
    assert not is_allowed_host_header(hosts, "attacker.example:15000")


def test_trainer_runs_the_main_pipeline_from_the_image(compose):
    project = yaml.safe_load((REPO / "MLproject").read_text())
    cmd = command_of(compose["services"]["trainer"])
    assert cmd[:2] == ["bash", "-c"]
    steps = [shlex.split(step) for step in cmd[2].split("&&")]
    assert steps[0] == ["python", "-m", "playlistai.tracking"]
    assert (REPO / "playlistai" / "tracking.py").is_file()
    mlflow_run = steps[1]
    assert mlflow_run[:3] == ["mlflow", "run", "."]
    assert mlflow_run[mlflow_run.index("--env-manager") + 1] == "local"
    entry = mlflow_run[mlflow_run.index("-e") + 1]
    assert entry == "main"
    assert entry in project["entry_points"], "MLproject has no `main` entry point"
    assert compose["services"]["trainer"]["restart"] == "no", "the trainer runs once and exits"


def test_start_order_uses_health_conditions(compose):
    services = compose["services"]
    dockerfile_healthchecks = {
        "api": "HEALTHCHECK" in (DEPLOY / "api.Dockerfile").read_text(),
    }
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep] or dockerfile_healthchecks.get(dep), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no health check")
    expected = {
        ("mlflow", "postgres"), ("api", "redis"), ("api", "mlflow"), ("trainer", "mlflow"),
        ("prometheus", "pushgateway"), ("grafana", "prometheus"),
    }
    for svc, dep in expected:
        assert services[svc]["depends_on"][dep]["condition"] == "service_healthy", (svc, dep)
    # no cycles
    seen: dict[str, int] = {}

    def visit(n: str) -> None:
        assert seen.get(n) != 1, f"depends_on cycle through {n}"
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for d in services[n].get("depends_on") or {}:
            visit(d)
        seen[n] = 2

    for n in services:
        visit(n)


def test_grafana_uses_the_seed_credentials(compose):
    env = env_of(compose["services"]["grafana"])
    assert (env["GF_SECURITY_ADMIN_USER"], env["GF_SECURITY_ADMIN_PASSWORD"]) == ("admin", "admin")


@pytest.mark.parametrize("target", ["up", "down", "logs"])
def test_make_targets_drive_this_compose_file(target):
    proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "docker compose -f deploy/docker-compose.yml" in proc.stdout


def test_make_up_starts_every_service(compose):
    proc = subprocess.run(["make", "-n", "up"], cwd=REPO, capture_output=True, text=True)
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("docker compose")]
    first, second = lines[0], lines[1]
    assert "--wait" in first and "--build" in first
    waited = set(first[first.index("--wait") + 1:])
    assert waited | {"trainer"} == set(compose["services"]), "make up waits for every long-running service"
    assert second[-1] == "trainer"


def test_grafana_provisioning_fits_the_compose_mounts():
    """Datasource at the compose Prometheus, dashboards from the mounted dashboards folder."""
    provisioning = REPO / "monitoring" / "grafana" / "provisioning"
    datasources = sorted((provisioning / "datasources").glob("*.y*ml"))
    providers = sorted((provisioning / "dashboards").glob("*.y*ml"))
    if not datasources or not providers:
        pytest.skip("monitoring/grafana/provisioning not in the repository yet")
    urls = [ds.get("url") for f in datasources for ds in yaml.safe_load(f.read_text()).get("datasources", [])
            if ds.get("type") == "prometheus"]
    assert "http://prometheus:9090" in urls, urls
    paths = [p.get("options", {}).get("path") for f in providers
             for p in yaml.safe_load(f.read_text()).get("providers", [])]
    assert any(str(p).startswith("/var/lib/grafana/dashboards") for p in paths), paths
    assert list((REPO / "monitoring" / "grafana" / "dashboards").glob("*.json")), "no dashboard JSON"
