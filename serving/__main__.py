"""`python -m serving`: the API in one process, with the same edge as under gunicorn (serving/edge.py):
header limits, read timeouts, JSON protocol errors, draining on SIGTERM.

    python -m serving          # API_HOST:API_PORT; production runs gunicorn -c serving/gunicorn_conf.py
"""

from __future__ import annotations

import os

from uvicorn.config import Config

from playlistai.config import get_settings
from serving.edge import EdgeServer, configure, edge_limits


def main() -> None:
    settings = get_settings()
    config = Config("serving.main:app", host=settings.API_HOST, port=settings.API_PORT,
                    lifespan="on", access_log=False, log_level=os.environ.get("LOG_LEVEL", "info").lower())
    limits = edge_limits()
    EdgeServer(configure(config, limits), limits).run()


if __name__ == "__main__":
    main()
