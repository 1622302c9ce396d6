# syntax=docker/dockerfile:1
# PlayListAI API image: the FastAPI service under gunicorn with uvicorn workers, CPU-only torch.
#
#   docker build -f deploy/api.Dockerfile -t playlistai-api .      (from the repository root)
#   docker run -p 8088:8088 -e MLFLOW_TRACKING_URI=http://mlflow:5000 playlistai-api
#
# Two stages: the build stage has the compiler toolchain and pip's caches; the final stage gets only
# the virtual environment and the application code, and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Same order as `make setup`: torch first, pinned (here from the CPU wheel index: no CUDA in the
# image), then the package from pyproject.toml, whose `torch==2.13.0` is then already satisfied.
RUN pip install --upgrade pip \
 && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY playlistai ./playlistai
RUN pip install . && pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="playlistai-api" \
      org.opencontainers.image.description="PlayListAI playlist-continuation API" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 playlistai \
 && useradd --system --uid 10001 --gid playlistai --home-dir /app --shell /usr/sbin/nologin playlistai
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    API_HOST=0.0.0.0 \
    API_PORT=8088 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/playlistai-metrics \
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
WORKDIR /app
# The library is installed in /opt/venv; the app runs from /app (the repository layout).
COPY serving ./serving
USER 10001:10001
EXPOSE 8088
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('API_PORT', '8088'), timeout=4)"]
CMD ["gunicorn", "serving.main:app", "-c", "serving/gunicorn_conf.py"]
