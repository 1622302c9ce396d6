"""Session bootstrap intervals and the paired comparison the promotion gate reuses."""

import numpy as np
import pytest

from playlistai.evaluation.bootstrap import bootstrap_ci, paired_bootstrap


def test_interval_contains_the_mean_and_narrows_with_more_sessions():
    rng = np.random.default_rng(0)
    small = (rng.random(200) < 0.3).astype(float)
    large = (rng.random(20000) < 0.3).astype(float)
    ci_small = bootstrap_ci(small, np.arange(200) // 4, n_resamples=300)
    ci_large = bootstrap_ci(large, np.arange(20000) // 4, n_resamples=300)
    assert ci_small.low <= ci_small.mean <= ci_small.high
    assert ci_small.mean == pytest.approx(small.mean())
    assert (ci_large.high - ci_large.low) < (ci_small.high - ci_small.low) / 5
    assert ci_large.n_sessions == 5000 and ci_large.n_cases == 20000


def test_resampling_is_over_sessions_not_cases():
    # every session is all hits or all misses: cases within a session are perfectly correlated,
    # so the session interval must be as wide as that of 50 independent cases, not 1000
    per_session = (np.arange(50) % 2).astype(float)
    per_case = np.repeat(per_session, 20)
    ci = bootstrap_ci(per_case, np.repeat(np.arange(50), 20), n_resamples=500)
    assert ci.high - ci.low > 0.2


def test_constant_metric_has_a_zero_width_interval_and_empty_input_is_nan():
    ci = bootstrap_ci(np.ones(30), np.arange(30), n_resamples=50)
    assert ci.low == ci.high == 1.0
    assert np.isnan(bootstrap_ci(np.zeros(0), np.zeros(0, int)).mean)


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    sessions = np.arange(4000) // 4
    b = (rng.random(4000) < 0.30).astype(float)
    better = np.maximum(b, (rng.random(4000) < 0.10).astype(float))
    cmp = paired_bootstrap(better, b, sessions, n_resamples=500)
    assert cmp.mean_diff == pytest.approx(better.mean() - b.mean())
    assert cmp.low > 0 and cmp.significant and cmp.p_value < 0.01
    same = paired_bootstrap(b, b, sessions, n_resamples=500)
    assert same.mean_diff == 0 and not same.significant and same.p_value == 1.0
    noise = paired_bootstrap(b, rng.permutation(b), sessions, n_resamples=500)
    assert noise.low < noise.mean_diff < noise.high and noise.p_value > 0.01
    assert set(cmp.as_dict()) >= {"mean_diff", "low", "high", "p_value", "significant"}


def test_paired_bootstrap_refuses_misaligned_inputs():
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones(3), np.ones(4), np.arange(3))
