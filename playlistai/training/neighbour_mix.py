"""After training: mix the session neighbours' votes (and the last track's transitions beside them)
into the best model's scores, when validation says they help (models/base.py, models/neighbours.py).

The weight and the transitions' share are fitted with the repeat bonus (the votes lift history
tracks too, so the bonus that was best alone is no longer best beside them) on a larger validation
sample than the per-epoch one, once, on the final weights. A mix that does not beat the model alone on validation is not
kept: the checkpoint then stays as training left it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from playlistai.data.sequences import split_cases, tail_sessions
from playlistai.evaluation.evaluator import rows_per_score_batch
from playlistai.models.checkpoint import load_checkpoint, save_checkpoint
from playlistai.models.neighbours import SessionNeighbours
from playlistai.training.loop import EARLY_STOP_METRIC, VAL_KS, validation_subset
from playlistai.training.score_terms import (
    BONUS_MULTIPLES,
    TRANSITION_SHARES,
    WEIGHT_MULTIPLES,
    collect_evidence,
    fit_terms,
)

FIT_CASES = 20_000            # validation cases the weight is fitted on
MAX_SESSIONS = 1_000_000      # the most recent training sessions kept as neighbours (memory bound)
KEYS = [f"{m}_at_{k}" for m in ("recall", "ndcg", "mrr") for k in VAL_KS]


@dataclass
class NeighbourMix:
    kept: bool                          # the checkpoint now mixes the neighbours in
    weight: float
    transition_share: float             # of the last track's transitions beside the votes
    repeat_bonus: float
    before: dict[str, float]            # val metrics of the model as trained
    after: dict[str, float]             # val metrics of the checkpoint as saved
    cases: int
    sessions: int
    seconds: float

    def describe(self) -> str:
        """One line for the person who ran the training."""
        verdict = "mixed in" if self.kept else "not mixed in (no validation gain)"
        return (
            f"session neighbours {verdict}: val_ndcg_at_10 {self.before.get('ndcg_at_10', float('nan')):.4f} -> "
            f"{self.after.get('ndcg_at_10', float('nan')):.4f} on {self.cases:,} val cases "
            f"(weight {self.weight if self.kept else 0.0:.3g}, transitions' share "
            f"{self.transition_share if self.kept else 0.0:.3g}, repeat bonus {self.repeat_bonus:.3g})"
        )

    def metrics(self) -> dict[str, float]:
        """What the train stage logs: `mix_*` beside the training's own `best_val_*`."""
        out = {"neighbour_weight": self.weight if self.kept else 0.0,
               "neighbour_transition_share": self.transition_share if self.kept else 0.0,
               "mix_repeat_bonus": self.repeat_bonus,
               "mix_fit_cases": float(self.cases), "mix_fit_seconds": self.seconds}
        out.update({f"mix_val_{k}": v for k, v in self.after.items()})
        return out


def mix_neighbours(
    checkpoint_dir: str | Path,
    data_dir: str | Path,
    *,
    exclude_seen: bool,
    fit_bonus: bool = True,
    max_cases: int = FIT_CASES,
    seed: int = 0,
) -> NeighbourMix:
    """Fit the neighbours on the training split and their weight on validation; rewrite the
    checkpoint in `checkpoint_dir` when the mix is kept."""
    t0 = time.perf_counter()
    model, vocab, config = load_checkpoint(checkpoint_dir)
    # the neighbours keep the most recent sessions only: read just those, from the end of the split
    train = tail_sessions(data_dir, "train", vocab, MAX_SESSIONS)
    neighbours = SessionNeighbours.fit(train.items, vocab.size, with_transitions=True)
    val = validation_subset(split_cases(data_dir, "val", vocab, model.config.max_seq_len, max_cases, seed),
                            max_cases, seed)
    bonus = float(model.repeat_bonus)
    metric = EARLY_STOP_METRIC.removeprefix("val_")
    if not len(val):
        return NeighbourMix(False, 0.0, 0.0, bonus, {}, {}, 0, len(train), time.perf_counter() - t0)
    batch = rows_per_score_batch(vocab.size)
    evidence = collect_evidence(model, val, max(VAL_KS), batch, neighbours=neighbours, exclude_seen=exclude_seen)
    n = len(evidence)
    before = {k: v / n for k, v in zip(KEYS, evidence.metric_sums(KEYS, VAL_KS, bonus, 0.0), strict=True)}
    # with history tracks excluded the bonus moves nothing; it is refitted only where training fitted it
    refit_bonus = fit_bonus and not exclude_seen
    fitted = fit_terms(evidence, KEYS, VAL_KS, metric, bonus_multiples=BONUS_MULTIPLES,
                       weight_multiples=WEIGHT_MULTIPLES, shares=TRANSITION_SHARES,
                       fixed_bonus=None if refit_bonus else bonus)
    kept = fitted.weight > 0 and fitted.metrics[metric] > before[metric]
    if kept:
        neighbours.transition_share = fitted.share
        if not fitted.share:
            neighbours.transitions = None          # not saved, not held in memory when serving
        model.neighbours = neighbours
        model.neighbour_weight.fill_(fitted.weight)
        model.repeat_bonus.fill_(fitted.bonus)
        extra = {k: v for k, v in config.items() if k not in ("format_version", "model_config")}
        save_checkpoint(checkpoint_dir, model, vocab, extra=extra)
    return NeighbourMix(
        kept=kept, weight=fitted.weight, transition_share=fitted.share, repeat_bonus=fitted.bonus if kept else bonus,
        before=before, after=fitted.metrics if kept else before, cases=n, sessions=neighbours.sessions.shape[0],
        seconds=time.perf_counter() - t0,
    )
