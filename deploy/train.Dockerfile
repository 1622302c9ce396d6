# syntax=docker/dockerfile:1
# PlayListAI training image: the MLflow project (every pipeline stage) and Ray, CPU-only torch.
# One image for three jobs:
#   - `mlflow run . -e main --env-manager local` (the compose `trainer` service),
#   - the Ray head and workers of the KubeRay RayCluster, and the RayJob that runs `-e train` on it,
#   - `mlflow server` (the compose `mlflow` service: mlflow and the PostgreSQL driver are in here).
#
#   docker build -f deploy/train.Dockerfile -t playlistai-train .    (from the repository root)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Must match pyproject.toml's ray pin and deploy/k8s/raycluster.yaml's rayVersion (a test checks).
ARG RAY_VERSION=2.60.0
# Extra packages, e.g. `--build-arg EXTRA_PACKAGES=boto3` for an MLflow artifact store on S3.
ARG EXTRA_PACKAGES=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Same order as `make setup`: torch first (the CPU wheel), then the package from pyproject.toml.
# ray[default] adds the dashboard and job server that KubeRay's RayJob and autoscaler talk to.
RUN pip install --upgrade pip \
 && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY playlistai ./playlistai
RUN pip install . "ray[default,train]==${RAY_VERSION}" ${EXTRA_PACKAGES} && pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="playlistai-train" \
      org.opencontainers.image.description="PlayListAI pipeline, Ray workers and MLflow server" \
      org.opencontainers.image.licenses="Apache-2.0"
# wget: KubeRay's default probes on Ray pods call the raylet and GCS health endpoints with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 playlistai \
 && useradd --system --uid 10001 --gid playlistai --home-dir /app --shell /bin/bash playlistai
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    GIT_PYTHON_REFRESH=quiet \
    DATA_DIR=/app/data
WORKDIR /app
# The MLflow project: `mlflow run /app -e <entry point>` runs from here.
COPY MLproject conda.yaml pyproject.toml ./
COPY entrypoints ./entrypoints
COPY monitoring ./monitoring
RUN mkdir -p /app/data /app/mlartifacts && chown -R 10001:10001 /app
USER 10001:10001
CMD ["bash", "-c", "python -m playlistai.tracking && mlflow run . -e main --env-manager local"]
