import pytest

from playlistai.config import Settings, SettingsError, load_settings


def test_defaults_match_env_example(monkeypatch):
    from pathlib import Path

    keys = {}
    for line in Path(__file__).resolve().parents[1].joinpath("env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            keys[k] = v
    for k in keys:
        monkeypatch.delenv(k, raising=False)
    s = Settings(_env_file=None)
    fields = set(Settings.model_fields)
    assert set(keys) <= fields, f"env.example keys without a Settings field: {set(keys) - fields}"
    for k, v in keys.items():
        assert str(getattr(s, k)).lower() == v.lower() or float(getattr(s, k)) == float(v), k


@pytest.mark.parametrize("key, value", [("MAX_SEQ_LEN", "abc"), ("API_PORT", "70000"), ("USE_FAISS", "maybe"),
                                        ("MODEL_NAME", "bert"), ("LOSS_LABEL_SMOOTH", "1.5")])
def test_invalid_values_name_the_key(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=key):
        load_settings()


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("SESSION_GAP_MIN", "30")
    monkeypatch.setenv("USE_FAISS", "true")
    s = load_settings()
    assert s.SESSION_GAP_MIN == 30 and s.USE_FAISS is True
    assert s.model_family == "sasrec"


def test_web_concurrency_defaults_to_the_cores_this_process_may_use(monkeypatch):
    import os

    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert Settings(_env_file=None).WEB_CONCURRENCY == 3          # the affinity mask, not the machine
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert Settings(_env_file=None).WEB_CONCURRENCY == 16         # no affinity on this OS: every core
    monkeypatch.setattr(os, "cpu_count", lambda: 256)
    assert Settings(_env_file=None).WEB_CONCURRENCY == 64         # capped at the setting's maximum
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert load_settings().WEB_CONCURRENCY == 5                   # the environment still decides
    monkeypatch.setenv("WEB_CONCURRENCY", "0")
    with pytest.raises(SettingsError, match="WEB_CONCURRENCY"):
        load_settings()


def test_item_table_dtype_takes_float32_or_bfloat16(monkeypatch):
    monkeypatch.delenv("ITEM_TABLE_DTYPE", raising=False)
    assert load_settings().ITEM_TABLE_DTYPE == "float32"
    monkeypatch.setenv("ITEM_TABLE_DTYPE", "bfloat16")
    assert load_settings().ITEM_TABLE_DTYPE == "bfloat16"
    monkeypatch.setenv("ITEM_TABLE_DTYPE", "fp16")
    with pytest.raises(SettingsError, match=r"ITEM_TABLE_DTYPE: Input should be 'float32' or 'bfloat16' \(got 'fp16'\)"):
        load_settings()
