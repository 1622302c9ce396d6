"""The project's own files agree with each other."""

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_conda_env_mirrors_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(deps)
    assert "python=3.11" in conda["dependencies"]


def test_every_mlproject_entry_point_has_a_module():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    for name, entry in project["entry_points"].items():
        module = entry["command"].split("python -m ")[1].split()[0]
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), name
        for param in entry.get("parameters", {}):
            assert "{" + param + "}" in entry["command"], f"{name}: param {param} is not passed on"


def test_make_export_is_the_register_step_on_the_latest_training_run():
    import subprocess

    def dry_run(*args: str) -> str:
        proc = subprocess.run(["make", "-n", *args, "-o", ".venv/.installed"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    export, register = dry_run("export"), dry_run("register")
    assert export == register
    assert "python -m playlistai.latest_model --data-dir data --run-id)" in export
    assert "-e register -P run_id=$run_id -P data_dir=data" in export
    assert "run_id=abc123 &&" in dry_run("export", "RUN_ID=abc123")
    assert "latest_model" not in dry_run("export", "RUN_ID=abc123")
