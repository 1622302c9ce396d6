"""The scenarios, in the order they run. Each module has `KEY`, `TITLE` and `run(ws) -> ScenarioResult`."""

from __future__ import annotations

import importlib

MODULES = [
    "sustained_load",         # 1
    "redis_faults",           # 2
    "model_rollout",          # 3
    "bad_model_versions",     # 4
    "tracking_store_faults",  # 5
    "bad_input",              # 6
    "pipeline_faults",        # 7
    "promotion_concurrency",  # 8
    "overload",               # 9
    "slow_clients",           # 10
    "heavy_bodies",           # 11
    "sigterm_under_load",     # 12
]


def load(name: str):
    return importlib.import_module(f"reliability.scenarios.{name}")
