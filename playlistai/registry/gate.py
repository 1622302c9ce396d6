"""The promotion gate's measurement: challenger vs production on the same test cases.

Both models rank the full catalog for the same next-track cases of the test split
(docs/ARCHITECTURE.md, "Next-track cases"; tracks of the input excluded), and the per-case nDCG@10
differences go through the evaluation's paired session bootstrap. The challenger wins only if the whole interval of the difference is
above zero: a challenger that is merely "not worse" does not replace a model that is serving.

Same cases when the vocabularies differ (a production model trained on older data): the test
events are restricted to tracks both vocabularies know, so each case has the same history and
target for both models and neither is charged for a track it could never have recommended. With
equal vocabularies (the usual case) these are exactly the evaluation stage's test cases, so the
figures match the registered `test_ndcg_at_10`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from playlistai.data.sequences import encode_sessions, load_split, next_track_cases
from playlistai.data.vocab import Vocabulary
from playlistai.evaluation.bootstrap import paired_bootstrap
from playlistai.evaluation.evaluator import per_case_metrics, rank_next_track

GATE_METRIC = "ndcg_at_10"
REPORTED = ("recall_at_20", "ndcg_at_10", "mrr_at_20")


@dataclass
class GateComparison:
    metric: str
    challenger: float
    production: float
    mean_diff: float
    low: float
    high: float
    p_value: float
    confidence: float
    n_cases: int
    n_sessions: int
    same_vocabulary: bool

    @property
    def challenger_better(self) -> bool:
        return bool(self.mean_diff > 0 and self.low > 0)

    def as_dict(self) -> dict:
        return {**asdict(self), "challenger_better": self.challenger_better}


def _per_case(model, vocab: Vocabulary, frame, batch_size: int = 512):
    cases = next_track_cases(encode_sessions(frame, vocab), model.config.max_seq_len)
    if len(cases) == 0:
        raise ValueError("the test split has no next-track case the models can both be scored on")
    ranks = rank_next_track(model, cases, exclude_seen_settings=(True,), batch_size=batch_size)[True].ranks
    return per_case_metrics(ranks, (10, 20)), cases


def split_metrics(model, vocab: Vocabulary, data_dir: str | Path, split: str = "test") -> dict[str, float]:
    """`test_recall_at_20`, `test_ndcg_at_10`, `test_mrr_at_20`, `test_num_cases` of one model."""
    per_case, cases = _per_case(model, vocab, load_split(data_dir, split))
    out = {f"{split}_{m}": float(per_case[m].mean()) for m in REPORTED}
    out[f"{split}_num_cases"] = float(len(cases))
    return out


def compare_models(
    challenger_model,
    challenger_vocab: Vocabulary,
    production_model,
    production_vocab: Vocabulary,
    data_dir: str | Path,
    *,
    split: str = "test",
    metric: str = GATE_METRIC,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GateComparison:
    frame = load_split(data_dir, split)
    same = challenger_vocab.track_ids == production_vocab.track_ids
    if not same:
        shared = set(challenger_vocab.track_ids) & set(production_vocab.track_ids)
        frame = frame[frame["track_id"].astype(str).isin(shared)]
    a, cases_a = _per_case(challenger_model, challenger_vocab, frame)
    b, cases_b = _per_case(production_model, production_vocab, frame)
    if len(cases_a) != len(cases_b) or not np.array_equal(cases_a.session_index, cases_b.session_index):
        raise RuntimeError("the gate's case sets differ between the two models")  # a bug, not bad input
    cmp = paired_bootstrap(a[metric], b[metric], cases_a.session_index, n_resamples, confidence, seed)
    return GateComparison(
        metric=f"{split}_{metric}",
        challenger=float(a[metric].mean()),
        production=float(b[metric].mean()),
        mean_diff=cmp.mean_diff,
        low=cmp.low,
        high=cmp.high,
        p_value=cmp.p_value,
        confidence=confidence,
        n_cases=cmp.n_cases,
        n_sessions=cmp.n_sessions,
        same_vocabulary=same,
    )
