"""Drift between the traffic a model sees and the data it was trained on.

Features: the drift-feature schema of playlistai/inference/features.py (one row per request, the
same definitions over training next-track cases; the packaged training reference has no top_score,
since a score needs the model, so against it only the other five are tested). A continuous feature
(history_len, unknown_share, mean_pop_pct, top_score) is tested with Kolmogorov-Smirnov, a
categorical one (hour 0..23, dow 0..6) with chi-squared.

alibi-detect runs the tests. Several features are tested at once, so each feature's p-value is
compared with a Bonferroni-corrected threshold, p_val / (number of features, both detectors
together): `drift_detected` means at least one feature falls below it, which keeps the family-wise
false-alarm rate of one job run at most `p_val` when nothing changed. The default p_val is 0.01:
a job that runs every few minutes would otherwise page someone daily on noise. PSI (population stability index) is computed per
feature with numpy, on reference quantile bins (continuous) or on the categories (hour, dow);
0.1-0.25 is a moderate shift, above 0.25 a large one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from playlistai.inference.features import CATEGORICAL, CONTINUOUS, DRIFT_FEATURE_NAMES

PSI_ALERT = 0.25
EPS = 1e-4


def psi_continuous(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI over the reference's quantile bins (ties collapse bins, so heavy point masses stay sane)."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_counts = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    cur_counts = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    return _psi(ref_counts, cur_counts)


def psi_categorical(reference: np.ndarray, current: np.ndarray, n_categories: int) -> float:
    ref_counts = np.bincount(np.asarray(reference, dtype=np.int64), minlength=n_categories)[:n_categories]
    cur_counts = np.bincount(np.asarray(current, dtype=np.int64), minlength=n_categories)[:n_categories]
    return _psi(ref_counts, cur_counts)


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    p = np.maximum(ref_counts / max(ref_counts.sum(), 1), EPS)
    q = np.maximum(cur_counts / max(cur_counts.sum(), 1), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass
class DriftResult:
    status: str                                  # "ok", "drift" or "not_enough_data"
    n_reference: int
    n_current: int
    drift_detected: bool = False
    psi: dict[str, float] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # corrected threshold per feature
    features: list[str] = field(default_factory=list)
    message: str = ""
    detectors: dict = field(default_factory=dict, repr=False)  # name -> alibi-detect detector

    @property
    def drifted_features(self) -> list[str]:
        return [f for f in self.features if self.p_values.get(f, 1.0) < self.thresholds.get(f, 0.0)]

    def as_dict(self) -> dict:
        return {
            "status": self.status, "drift_detected": self.drift_detected, "n_reference": self.n_reference,
            "n_current": self.n_current, "psi": self.psi, "p_values": self.p_values,
            "thresholds": self.thresholds, "drifted_features": self.drifted_features, "message": self.message,
        }


def detect_drift(reference: pd.DataFrame, current: pd.DataFrame, p_val: float = 0.01, min_samples: int = 200) -> DriftResult:
    """Compare `current` request features with the training `reference` (columns: DRIFT_FEATURE_NAMES)."""
    from alibi_detect.cd import ChiSquareDrift, KSDrift  # slow to import: only when the job runs

    features = [f for f in DRIFT_FEATURE_NAMES if f in reference.columns and f in current.columns]
    if not features:
        raise ValueError(f"no drift feature in common; expected some of {DRIFT_FEATURE_NAMES}")
    current = current[features].dropna()
    reference = reference[features].dropna()
    result = DriftResult(status="ok", n_reference=len(reference), n_current=len(current), features=features)
    if len(current) < min_samples or len(reference) < min_samples:
        result.status = "not_enough_data"
        result.message = (f"not enough data: {len(current)} current and {len(reference)} reference rows, "
                          f"at least {min_samples} of each needed; no drift test was run")
        return result

    cont = [f for f in features if f in CONTINUOUS]
    cat = [f for f in features if f in CATEGORICAL]
    per_feature = p_val / len(features)
    # each detector corrects over its own features; scale its level so the threshold is per_feature
    def run(name: str, detector, columns: list[str], dtype) -> None:
        pred = detector.predict(current[columns].to_numpy(dtype), return_p_val=True)["data"]
        for f, p in zip(columns, np.atleast_1d(pred["p_val"]), strict=True):
            result.p_values[f] = float(p)
            result.thresholds[f] = per_feature
        result.drift_detected |= bool(pred["is_drift"])
        result.detectors[name] = detector

    if cont:
        ks = KSDrift(reference[cont].to_numpy(np.float32), p_val=per_feature * len(cont), correction="bonferroni")
        run("ks", ks, cont, np.float32)
    if cat:
        chi = ChiSquareDrift(
            reference[cat].to_numpy(np.int64), p_val=per_feature * len(cat), correction="bonferroni",
            categories_per_feature={i: CATEGORICAL[f] for i, f in enumerate(cat)},
        )
        run("chi2", chi, cat, np.int64)
    for f in features:
        if f in CATEGORICAL:
            result.psi[f] = psi_categorical(reference[f], current[f], CATEGORICAL[f])
        else:
            result.psi[f] = psi_continuous(reference[f], current[f])
    result.status = "drift" if result.drift_detected else "ok"
    result.message = (f"drift in {', '.join(result.drifted_features)}" if result.drift_detected
                      else "no drift detected")
    return result
