"""deploy/k8s: every manifest is a valid Kubernetes object, and the objects agree with each other.

Built-in kinds are validated with kubernetes-validate (the Kubernetes OpenAPI schemas it ships,
strict: unknown fields fail). KubeRay's RayCluster and RayJob are custom resources whose CRDs are
not in kubernetes-validate, so they are checked against the fields listed below, taken from the
KubeRay API reference for `ray.io/v1` (docs/reference/api.md of ray-project/kuberay: RayClusterSpec,
HeadGroupSpec, WorkerGroupSpec, AutoscalerOptions, RayJobSpec, with their enums); the pod templates
inside them are ordinary PodTemplateSpecs and go through kubernetes-validate.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests target (autoscaling/v2, sidecar-free)

# --- KubeRay ray.io/v1 fields (KubeRay API reference) -------------------------------------------
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
                   "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
                   "workerGroupSpecs", "authOptions"}
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                     "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                      "upscalingMode", "version", "env", "envFrom", "volumeMounts"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
SERVICE_TYPES = {"ClusterIP", "NodePort", "LoadBalancer"}
KUBERAY_KINDS = {"RayCluster", "RayJob"}

# env names of PlayListAI containers that a library reads, not Settings
LIBRARY_ENV = {"PROMETHEUS_MULTIPROC_DIR"}


def objects(resources, kind):
    return [doc for _, doc in resources if doc["kind"] == kind]


def one(resources, kind, name=None):
    found = [d for d in objects(resources, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate_pod_template(template: dict, where: str) -> None:
    wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": where}, "template": template}
    kubernetes_validate.validate(wrapper, K8S_VERSION, strict=True)


def check_fields(obj: dict, allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: fields KubeRay does not define: {sorted(unknown)}"


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    check_fields(spec, RAYCLUSTER_SPEC, where)
    assert isinstance(spec.get("rayVersion"), str)
    if "autoscalerOptions" in spec:
        opts = spec["autoscalerOptions"]
        check_fields(opts, AUTOSCALER_OPTIONS, f"{where}.autoscalerOptions")
        assert opts.get("upscalingMode", "Default") in UPSCALING_MODES
    head = spec["headGroupSpec"]
    check_fields(head, HEAD_GROUP_SPEC, f"{where}.headGroupSpec")
    assert head.get("serviceType", "ClusterIP") in SERVICE_TYPES
    groups = [("headGroupSpec", head)]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        name = f"{where}.workerGroupSpecs[{i}]"
        check_fields(group, WORKER_GROUP_SPEC, name)
        assert isinstance(group["groupName"], str) and group["groupName"]
        lo, n, hi = group.get("minReplicas", 0), group.get("replicas", 0), group.get("maxReplicas", 2**31 - 1)
        assert all(isinstance(v, int) for v in (lo, n, hi)) and lo <= n <= hi, name
        groups.append((name, group))
    for name, group in groups:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values are strings"
        validate_pod_template(group["template"], name.replace(".", "-").replace("[", "-").replace("]", "").lower())


@pytest.fixture(scope="session")
def k8s(k8s_resources):
    return k8s_resources


def test_there_are_manifests(k8s):
    kinds = {doc["kind"] for _, doc in k8s}
    assert {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "RayCluster", "RayJob"} <= kinds


def test_builtin_objects_validate_against_the_kubernetes_schemas(k8s):
    checked = 0
    for name, doc in k8s:
        if doc["kind"] in KUBERAY_KINDS:
            continue
        for version in (K8S_VERSION, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc.message}")
        checked += 1
    assert checked >= 8


def test_kubernetes_validate_rejects_a_broken_deployment(k8s):
    """The validator is live: a misspelt field and a wrong type fail."""
    deployment = yaml.safe_load(yaml.safe_dump(one(k8s, "Deployment", "playlistai-api")))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = yaml.safe_load(yaml.safe_dump(one(k8s, "Deployment", "playlistai-api")))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_raycluster_uses_only_kuberay_fields_and_valid_pod_templates(k8s):
    cluster = one(k8s, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(cluster["spec"], "RayCluster.spec")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    workers = spec["workerGroupSpecs"]
    assert any(g["maxReplicas"] > g.get("minReplicas", 0) for g in workers), "an autoscaling worker group"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "training runs on the workers"


def test_the_field_check_rejects_an_unknown_kuberay_field(k8s):
    spec = yaml.safe_load(yaml.safe_dump(one(k8s, "RayCluster")["spec"]))
    spec["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(AssertionError, match="maxReplica"):
        check_ray_cluster_spec(spec, "RayCluster.spec")


def test_ray_version_is_the_same_everywhere(k8s):
    import ray

    cluster_version = one(k8s, "RayCluster")["spec"]["rayVersion"]
    dockerfile = (REPO / "deploy" / "train.Dockerfile").read_text()
    arg = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert cluster_version == arg == ray.__version__
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement

    ray_req = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert ray_req.specifier.contains(cluster_version)


def test_rayjob_runs_the_training_entry_point_on_the_raycluster(k8s):
    job = one(k8s, "RayJob")
    cluster = one(k8s, "RayCluster")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    check_fields(spec, RAYJOB_SPEC, "RayJob.spec")
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}, (
        "the job runs on the long-lived RayCluster (KubeRay labels its pods ray.io/cluster=<name>)")
    assert "rayClusterSpec" not in spec, "clusterSelector and rayClusterSpec exclude each other"
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))

    project = yaml.safe_load((REPO / "MLproject").read_text())
    runs = [shlex.split(part) for part in re.split(r"&&", shlex.split(spec["entrypoint"])[-1])]
    mlflow_runs = [r for r in runs if r[:2] == ["mlflow", "run"]]
    assert mlflow_runs, spec["entrypoint"]
    entries = []
    for run in mlflow_runs:
        assert run[2] == "/app", "the project directory of the training image"
        entry = run[run.index("-e") + 1]
        assert entry in project["entry_points"], entry
        params = [run[i + 1].split("=", 1)[0] for i, a in enumerate(run) if a == "-P"]
        unknown = set(params) - set(project["entry_points"][entry].get("parameters", {}))
        assert not unknown, f"{entry}: unknown params {unknown}"
        data_dirs = [run[i + 1].split("=", 1)[1] for i, a in enumerate(run) if a == "-P" and
                     run[i + 1].startswith("data_dir=")]
        assert all(d.startswith("/mnt/data/") for d in data_dirs), "data on the shared volume"
        entries.append(entry)
    assert "train" in entries or "main" in entries


def pod_specs(k8s):
    """(where, pod spec) of every pod that runs a PlayListAI image."""
    out = []
    for doc in objects(k8s, "Deployment"):
        out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
    cluster = one(k8s, "RayCluster")["spec"]
    out.append(("ray-head", cluster["headGroupSpec"]["template"]["spec"]))
    for g in cluster["workerGroupSpecs"]:
        out.append((f"ray-{g['groupName']}", g["template"]["spec"]))
    return [(w, s) for w, s in out if any(c["image"].startswith("playlistai-") for c in s["containers"])]


def test_references_between_objects_resolve(k8s):
    configmaps = {d["metadata"]["name"] for d in objects(k8s, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in objects(k8s, "PersistentVolumeClaim")}
    # Secrets are created with kubectl (README), never committed
    secrets = {"playlistai-api", "playlistai-mlflow"}
    for where, spec in pod_specs(k8s):
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in configmaps, where
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, where
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, where
    for svc in objects(k8s, "Service"):
        selector = svc["spec"]["selector"]
        targets = [d for d in objects(k8s, "Deployment")
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} Deployments"
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports
    images = {c["image"].split(":")[0] for _, s in pod_specs(k8s) for c in s["containers"]}
    assert images == {"playlistai-api", "playlistai-train"}  # deploy/api.Dockerfile, deploy/train.Dockerfile


def test_configmap_keys_are_settings_and_values_validate(k8s, settings_fields, monkeypatch):
    from playlistai.config import load_settings

    data = one(k8s, "ConfigMap", "playlistai-config")["data"]
    assert set(data) <= settings_fields, sorted(set(data) - settings_fields)
    for key in settings_fields:
        monkeypatch.delenv(key, raising=False)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.API_HOST == "0.0.0.0", "reachable from the pod network"
    for where, spec in pod_specs(k8s):
        for c in spec["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            assert names <= settings_fields | LIBRARY_ENV | {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"}, where


def test_api_deployment_probes_resources_and_scrape_annotations(k8s, settings_fields):
    from playlistai.config import Settings
    from serving.main import create_app

    routes = set(create_app().openapi()["paths"])
    port = Settings.model_fields["API_PORT"].default
    config = one(k8s, "ConfigMap", "playlistai-config")["data"]
    assert int(config["API_PORT"]) == port

    deployment = one(k8s, "Deployment", "playlistai-api")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["image"].startswith("playlistai-api:")
    assert [p["containerPort"] for p in container["ports"]] == [port]
    probes = {k: container[k]["httpGet"]["path"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == probes["startupProbe"] == "/healthz"
    assert probes["readinessProbe"] in ("/healthz", "/readyz")
    assert set(probes.values()) <= routes, f"probe paths the app does not serve: {set(probes.values()) - routes}"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and container["resources"]["limits"]
    assert {"name": "playlistai-config"} == container["envFrom"][0]["configMapRef"]
    admin = next(e for e in container["env"] if e["name"] == "ADMIN_TOKEN")
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "playlistai-api"
    assert "ADMIN_TOKEN" in settings_fields
    ann = template["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == port and ann["prometheus.io/path"] == "/metrics"
    assert "/metrics" in routes
    sec = template["spec"]["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0


def test_hpa_scales_the_api_deployment_on_cpu(k8s):
    hpa = one(k8s, "HorizontalPodAutoscaler")
    deployment = one(k8s, "Deployment", "playlistai-api")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "cpu" in container["resources"]["requests"], "CPU utilization is relative to the request"


def test_ray_pods_share_the_data_volume(k8s):
    claim = one(k8s, "PersistentVolumeClaim", "playlistai-data")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for where, spec in pod_specs(k8s):
        if not where.startswith("ray-"):
            continue
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        # the splits, and the train stage's checkpoints (storage_path outputs/train under /app)
        for path in ("/mnt/data", "/app/outputs"):
            assert vols[mounts[path]]["persistentVolumeClaim"]["claimName"] == "playlistai-data", (where, path)


def test_readme_applies_every_manifest():
    readme = (REPO / "README.md").read_text()
    for path in sorted(K8S.glob("*.yaml")):
        assert f"deploy/k8s/{path.name}" in readme or "kubectl apply -f deploy/k8s/" in readme, path.name
