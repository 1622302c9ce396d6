"""The training worker caps oneDNN's per-shape kernel caches before its first matmul."""

from __future__ import annotations

import os

from playlistai.training.worker import ONEDNN_CACHE_CAPACITY, bound_kernel_caches


def test_the_caps_are_set_unless_the_environment_sets_them(monkeypatch):
    for name in ONEDNN_CACHE_CAPACITY:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")          # an operator's own choice wins
    bound_kernel_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE_CAPACITY["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"

