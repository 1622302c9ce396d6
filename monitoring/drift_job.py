"""The drift job: live request features vs the training features packaged with the served model.

    reference  the training-data feature sample inside the model package (drift_reference.npz of
               `models:/playlistai@production`, or of a package folder given as model_uri)
    current    the latest `window` rows of the API's Redis stream, or a Parquet file of rows
    tests      monitoring/drift.py (KS / chi-squared with a Bonferroni correction, PSI per feature)

It logs to the active MLflow run (one metric per feature, the alibi-detect detectors saved with
`save_detector`, a reference-vs-current plot, the result as JSON), pushes the drift gauges to the
Pushgateway, and stores the result where the API's /metrics reads it (a Redis hash and a file).
Too few current rows is reported as "not enough data": no test runs and no alarm is raised.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.drift import DriftResult, detect_drift
from playlistai.inference.features import CATEGORICAL, DRIFT_FEATURE_NAMES, DRIFT_STATE_FIELD
from playlistai.model_ref import ModelRef
from playlistai.params import StageParams, param

PUSH_JOB = "playlistai_drift"
STREAM_SOURCE = "stream"
REDIS_TIMEOUT_S = 5.0


@dataclass
class DriftParams(StageParams):
    """The `drift` entry point's params (MLproject); 0 and "" leave a value to Settings
    (DriftJobConfig.from_settings)."""

    model_uri: str = param("", "reference model; defaults to models:/REGISTERED_MODEL_NAME@MODEL_ALIAS")
    current: str = param(STREAM_SOURCE, "`stream` (the API's Redis stream) or a Parquet file of rows")
    window: int = param(0, "latest requests to test; 0 = DRIFT_WINDOW", minimum=0)
    min_samples: int = param(0, "fewer rows: not enough data; 0 = DRIFT_MIN_SAMPLES", minimum=0)
    p_val: float = param(0.0, "family-wise false-alarm rate; 0 = DRIFT_P_VAL")
    pushgateway_url: str = param("", "defaults to PUSHGATEWAY_URL")


@dataclass(frozen=True)
class DriftJobConfig:
    model_uri: str
    current: str = STREAM_SOURCE         # "stream" or the path of a Parquet file of feature rows
    window: int = 1000
    min_samples: int = 200
    p_val: float = 0.01
    redis_url: str = ""
    stream_key: str = "playlistai:traffic:v1"
    state_key: str = "playlistai:drift:latest"
    state_file: str = "outputs/drift/latest.json"
    pushgateway_url: str = ""

    @classmethod
    def from_settings(cls, settings, **overrides) -> DriftJobConfig:
        values = dict(
            model_uri=settings.MODEL_URI or f"models:/{settings.REGISTERED_MODEL_NAME}@{settings.MODEL_ALIAS}",
            window=settings.DRIFT_WINDOW, min_samples=settings.DRIFT_MIN_SAMPLES, p_val=settings.DRIFT_P_VAL,
            redis_url=settings.REDIS_URL, stream_key=settings.TRAFFIC_STREAM_KEY,
            state_key=settings.DRIFT_STATE_KEY, state_file=settings.DRIFT_STATE_FILE,
            pushgateway_url=settings.PUSHGATEWAY_URL,
        )
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return cls(**values)


# -- inputs ---------------------------------------------------------------------------------------

def as_drift_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The drift features (playlistai.inference.features) among a frame's columns, as numbers."""
    columns = [f for f in DRIFT_FEATURE_NAMES if f in frame.columns]
    if not columns:
        raise ValueError(f"no drift feature among the columns {list(frame.columns)}; expected some of {DRIFT_FEATURE_NAMES}")
    return frame[columns].apply(pd.to_numeric, errors="coerce")


def _download_package_file(ref: ModelRef, name: str, dst: Path) -> Path:
    from playlistai.inference.package import PACKAGE_ARTIFACT

    try:      # only the file, not the weights
        return ModelRef.parse(ref.child(f"artifacts/{PACKAGE_ARTIFACT}/{name}")).fetch(dst)
    except Exception:   # stores that cannot address a file inside a model: the whole model
        model_dir = ref.fetch(dst / "model")
        from playlistai.inference.package import resolve_package_dir

        return resolve_package_dir(model_dir) / name


def load_reference(model_uri: str) -> tuple[pd.DataFrame, dict]:
    """(training feature rows, {model_version, n_cases}) from the model package behind `model_uri`."""
    from playlistai.inference.features import load_reference as load_package_reference
    from playlistai.inference.package import DRIFT_SAMPLE_FILE, DRIFT_STATS_FILE, resolve_package_dir

    ref = ModelRef.parse(model_uri)
    if ref.is_local and ref.local_dir is not None:
        package = resolve_package_dir(ref.local_dir)
        stats, sample = load_package_reference(package / DRIFT_STATS_FILE, package / DRIFT_SAMPLE_FILE)
        return as_drift_features(sample), {"model_version": None, "n_cases": stats.get("n_cases")}

    from playlistai.inference.package import ModelPackageError
    from playlistai.registry.pyfunc import registered_version

    try:
        version = registered_version(ref)
    except ModelPackageError as exc:
        raise ModelPackageError(f"{exc} The drift job compares traffic with a registered model's training "
                                f"features: register one first (`make pipeline`), or pass model_uri") from None
    if version is not None and ref.kind == "alias":      # the version the alias names now, once
        ref = ModelRef.of_version(ref.name, version)
    with tempfile.TemporaryDirectory(prefix="playlistai-drift-ref-") as tmp:
        stats_path = _download_package_file(ref, DRIFT_STATS_FILE, Path(tmp) / "stats")
        sample_path = _download_package_file(ref, DRIFT_SAMPLE_FILE, Path(tmp) / "sample")
        stats, sample = load_package_reference(stats_path, sample_path)
    return as_drift_features(sample), {"model_version": version, "n_cases": stats.get("n_cases")}


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)


def stream_rows(redis_url: str, stream_key: str, count: int) -> pd.DataFrame:
    """The latest `count` feature rows the API wrote to the stream (newest last)."""
    if not redis_url:
        raise ValueError("the current window comes from the Redis stream, but REDIS_URL is empty; "
                         "set it, or pass a Parquet file of feature rows as `current`")
    import redis

    client = _redis(redis_url)
    try:
        entries = client.xrevrange(stream_key, "+", "-", count=count)
    except redis.RedisError as exc:
        raise ValueError(f"cannot read the API's requests from Redis at {redis_url} ({exc}); start Redis and "
                         f"the API (`make api`), or pass a Parquet file of feature rows as `current`") from None
    finally:
        client.close()
    rows = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in reversed(entries)]
    return as_drift_features(pd.DataFrame(rows, columns=list(DRIFT_FEATURE_NAMES)))


def current_rows(config: DriftJobConfig) -> pd.DataFrame:
    if config.current == STREAM_SOURCE:
        return stream_rows(config.redis_url, config.stream_key, config.window)
    path = Path(config.current)
    if not path.is_file():
        raise FileNotFoundError(f"current: {path} is neither `{STREAM_SOURCE}` nor a Parquet file")
    return as_drift_features(pd.read_parquet(path)).tail(config.window)


# -- outputs --------------------------------------------------------------------------------------

def drift_state(result: DriftResult, model_version: str | None, finished_at: float) -> dict:
    """What the API's /metrics and the Pushgateway report, as JSON."""
    return {**result.as_dict(), "model_version": model_version, "finished_at": finished_at}


def push_registry(state: dict):
    """The gauges pushed to the Pushgateway: the names the API's /metrics uses (serving/metrics.py)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    psi = Gauge("drift_psi", "Population stability index of a request feature, live vs training",
                ["feature"], registry=registry)
    p_value = Gauge("drift_ks_p", "p-value of the drift test of a feature (KS; chi-squared for hour and dow)",
                    ["feature"], registry=registry)
    threshold = Gauge("drift_p_threshold", "Bonferroni-corrected p-value under which a feature has drifted",
                      ["feature"], registry=registry)
    for feature, value in state["psi"].items():
        psi.labels(feature).set(value)
    for feature, value in state["p_values"].items():
        p_value.labels(feature).set(value)
    for feature, value in state["thresholds"].items():
        threshold.labels(feature).set(value)
    Gauge("drift_detected", "1 when the latest drift run found drift", registry=registry).set(
        float(state["drift_detected"]))
    Gauge("drift_enough_data", "0 when the latest drift run had too few requests to test",
          registry=registry).set(float(state["status"] != "not_enough_data"))
    Gauge("drift_current_samples", "Requests the latest drift run compared with training",
          registry=registry).set(state["n_current"])
    Gauge("drift_last_success_timestamp_seconds", "When the latest drift run finished",
          registry=registry).set(state["finished_at"])
    return registry


def push_to_pushgateway(url: str, state: dict) -> None:
    """Replace the job's group on the Pushgateway (a feature no longer tested loses its series)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(url, job=PUSH_JOB, registry=push_registry(state), timeout=10)


def store_state(config: DriftJobConfig, state: dict) -> list[str]:
    """Write the state where the API reads it: the file always, the Redis hash when configured."""
    stored = []
    path = Path(config.state_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)
    stored.append(str(path))
    if config.redis_url:
        client = _redis(config.redis_url)
        try:
            client.hset(config.state_key, mapping={DRIFT_STATE_FIELD: json.dumps(state, sort_keys=True)})
        finally:
            client.close()
        stored.append(f"redis {config.state_key}")
    return stored


def distribution_figure(reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult):
    """One panel per feature: reference and current distributions, PSI and p-value in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = [f for f in DRIFT_FEATURE_NAMES if f in reference.columns]
    cols = 3
    rows = (len(features) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, feature in zip(axes.flat, features, strict=False):
        ref = reference[feature].dropna().to_numpy(np.float64)
        cur = current[feature].dropna().to_numpy(np.float64) if feature in current else np.zeros(0)
        if feature in CATEGORICAL:
            bins = np.arange(CATEGORICAL[feature] + 1) - 0.5
        else:
            values = np.concatenate([ref, cur])
            bins = np.histogram_bin_edges(values if len(values) else [0, 1], bins=30)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label=f"training ({len(ref)})")
        if len(cur):
            ax.hist(cur, bins=bins, density=True, alpha=0.5, label=f"live ({len(cur)})")
        title = feature
        if feature in result.psi:
            title += f"  PSI {result.psi[feature]:.3f}  p {result.p_values.get(feature, float('nan')):.2g}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(features):]:
        ax.axis("off")
    fig.suptitle(f"drift: {result.message}", fontsize=10)
    fig.tight_layout()
    return fig


def log_to_mlflow(result: DriftResult, reference: pd.DataFrame, current: pd.DataFrame, state: dict) -> None:
    """Metrics per feature, the detectors (save_detector), the plot and the result, in the active run."""
    import matplotlib.pyplot as plt
    import mlflow

    metrics = {"drift_detected": float(result.drift_detected), "drift_n_current": float(result.n_current),
               "drift_n_reference": float(result.n_reference)}
    for feature, value in result.psi.items():
        metrics[f"drift_psi_{feature}"] = value
    for feature, value in result.p_values.items():
        metrics[f"drift_p_{feature}"] = value
    for feature, value in result.thresholds.items():
        metrics[f"drift_p_threshold_{feature}"] = value
    mlflow.log_metrics(metrics)
    mlflow.set_tags({"drift_status": result.status, "drifted_features": ",".join(result.drifted_features)})
    mlflow.log_dict(state, "drift/result.json")
    if result.detectors:
        from alibi_detect.saving import save_detector

        with tempfile.TemporaryDirectory(prefix="playlistai-detectors-") as tmp:
            for name, detector in result.detectors.items():
                (Path(tmp) / name).mkdir()   # made here: alibi-detect warns about each folder it creates
                save_detector(detector, Path(tmp) / name)
            mlflow.log_artifacts(tmp, "drift/detectors")
    fig = distribution_figure(reference, current, result)
    mlflow.log_figure(fig, "drift/reference_vs_current.png")
    plt.close(fig)


def run_drift_job(config: DriftJobConfig) -> dict:
    """Run the drift tests and report them everywhere; returns the state (result + where it went).

    Expects an active MLflow run (the entry point opens it with `stage_run`)."""
    # two small files of the model package: no progress bars for them
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    reference, meta = load_reference(config.model_uri)
    current = current_rows(config)
    result = detect_drift(reference, current, p_val=config.p_val, min_samples=config.min_samples)
    state = drift_state(result, meta["model_version"], finished_at=time.time())
    log_to_mlflow(result, reference, current, state)
    stored_in = store_state(config, state)
    if config.pushgateway_url:
        try:
            push_to_pushgateway(config.pushgateway_url, state)
            state["pushed_to"] = config.pushgateway_url
        except OSError as exc:
            # the result is in MLflow and where the API reads it: a missing Pushgateway (a laptop
            # without the Compose stack) costs the push only, and says so
            reason = getattr(exc, "reason", None) or exc
            state["push_error"] = f"cannot reach the Pushgateway at {config.pushgateway_url} ({reason})"
            mlflow_tag("drift_push", "failed")
    else:
        state["push_error"] = "PUSHGATEWAY_URL is empty"
    state["stored_in"] = stored_in
    return state


def mlflow_tag(key: str, value: str) -> None:
    import mlflow

    if mlflow.active_run():
        mlflow.set_tag(key, value)


def summary_lines(state: dict) -> list[str]:
    """A readable report of one run, for the terminal: the verdict, a table of the tested features
    (PSI, p-value, the corrected threshold) and where the result went."""
    version = f", model version {state['model_version']}" if state.get("model_version") else ""
    lines = [f"drift: {state['message']} ({state['n_current']:,} live requests vs {state['n_reference']:,} "
             f"training cases{version})"]
    if state["psi"]:
        lines.append(f"  {'feature':<14} {'PSI':>8} {'p-value':>10} {'threshold':>10}")
        for feature in state["psi"]:
            flag = "  DRIFT" if feature in state["drifted_features"] else ""
            lines.append(f"  {feature:<14} {state['psi'][feature]:8.4f} {state['p_values'][feature]:10.3g}"
                         f" {state['thresholds'][feature]:10.3g}{flag}")
        lines.append("  (PSI: under 0.1 stable, 0.1-0.25 moderate, over 0.25 large; a feature has drifted "
                     "when its p-value is under the threshold)")
    if state.get("pushed_to"):
        lines.append(f"pushed to {state['pushed_to']} (job {PUSH_JOB})")
    lines.append(f"stored in {', '.join(state['stored_in'])} (the API's /metrics reports it)")
    return lines


def push_warning(state: dict) -> str | None:
    """The one-line warning of a result that was not pushed, or None."""
    if not state.get("push_error"):
        return None
    return (f"warning: drift: not pushed: {state['push_error']}; the result is logged to MLflow and stored for "
            f"the API's /metrics. Start one (`prometheus-pushgateway`, or `make up`) or point PUSHGATEWAY_URL at it")
