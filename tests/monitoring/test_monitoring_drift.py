import numpy as np
import pandas as pd
import pytest

from monitoring.drift import detect_drift, psi_categorical, psi_continuous


def feature_rows(n: int, rng: np.random.Generator, evening_share: float = 0.3) -> pd.DataFrame:
    hours = np.where(rng.random(n) < evening_share, rng.integers(18, 24, n), rng.integers(0, 24, n))
    return pd.DataFrame(
        {
            "history_len": np.minimum(rng.geometric(0.12, n), 50),
            "hour": hours,
            "dow": rng.integers(0, 7, n),
            "unknown_share": np.where(rng.random(n) < 0.8, 0.0, rng.random(n) * 0.3),
            "mean_pop_pct": rng.beta(4, 2, n),
            "top_score": rng.normal(8.0, 1.5, n),
        }
    )


def test_psi_is_zero_for_identical_and_large_for_disjoint():
    x = np.random.default_rng(0).normal(size=5000)
    assert psi_continuous(x, x) == pytest.approx(0.0, abs=1e-9)
    assert psi_continuous(x, x + 5) > 1.0
    assert psi_categorical(np.arange(24).repeat(10), np.arange(24).repeat(10), 24) == pytest.approx(0.0, abs=1e-12)
    assert psi_categorical(np.arange(24).repeat(10), np.full(100, 3), 24) > 1.0


def test_no_false_alarm_in_at_least_95_percent_of_identical_samples():
    alarms = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        result = detect_drift(feature_rows(3000, rng), feature_rows(1000, rng))
        alarms += result.drift_detected
        assert result.status in ("ok", "drift")
    assert alarms <= 2, f"{alarms} false alarms in 40 identical-distribution runs"


def test_a_shifted_hour_mix_is_detected_and_has_the_largest_psi():
    rng = np.random.default_rng(1)
    result = detect_drift(feature_rows(3000, rng), feature_rows(1000, rng, evening_share=0.8))
    assert result.drift_detected and result.status == "drift"
    assert "hour" in result.drifted_features
    assert max(result.psi, key=result.psi.get) == "hour"
    assert result.psi["hour"] > 0.25


def test_too_few_samples_is_not_an_alarm():
    rng = np.random.default_rng(2)
    result = detect_drift(feature_rows(3000, rng), feature_rows(50, rng, evening_share=1.0))
    assert result.status == "not_enough_data" and not result.drift_detected
    assert "not enough data" in result.message
