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
