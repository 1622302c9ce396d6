"""Sessions -> train / val / test by time, and the track vocabulary (never of the test period).

`temporal` (default): sessions are ordered by start time; the latest `test_frac` form the test
split, the `val_frac` before them validation. The cut-offs are *times*: a training session that is
still running when the validation period starts loses its plays from that moment on (likewise for
validation at the test cut-off), so no event of a later period is ever used to fit or tune, and no
test event ever builds the vocabulary.

`leave_one_out`: the protocol of the SASRec papers. Each user's plays form one sequence; the last
play is the test target, the second to last the validation target, the rest is training data.
Users with fewer than 3 plays only train.

The vocabulary (`vocab_scope`) is built from the training split (`train`, the default) or from the
training and validation splits together (`train_val`), never from test. `train_val` is what
published session benchmarks assume: their "training period" is everything before the test
sessions, and their test sets keep only items seen there. Carving validation out of that period
with a train-only vocabulary would turn test items seen only during validation into unknown
tracks, and the test cases that need them would disappear from the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from playlistai.data.vocab import Vocabulary

STRATEGIES = ("temporal", "leave_one_out")
VOCAB_SCOPES = ("train", "train_val")
# identifies one play: sessionize drops exact duplicates on these, so no two events share them
_EVENT_KEY = ["user_id", "track_id", "ts"]


def parse_vocab_scope(value: str) -> str:
    scope = str(value).strip().lower()
    if scope not in VOCAB_SCOPES:
        raise ValueError(f"vocab_scope: expected one of {', '.join(VOCAB_SCOPES)}, got {value!r}")
    return scope


def vocab_events(frames: dict[str, pd.DataFrame], scope: str) -> pd.DataFrame:
    """The events the vocabulary is counted on. With `train_val`, leave_one_out's validation
    sequences repeat the user's training plays, so shared plays are counted once."""
    scope = parse_vocab_scope(scope)
    if scope == "train":
        return frames["train"]
    both = pd.concat([frames["train"], frames["val"]], ignore_index=True)
    return both.drop_duplicates(subset=_EVENT_KEY, keep="first")


@dataclass
class SplitResult:
    frames: dict[str, pd.DataFrame]
    vocab: Vocabulary
    meta: dict


def _finish(frame: pd.DataFrame, targets_all_but_first: bool = True) -> pd.DataFrame:
    frame = frame.sort_values(["session_id", "pos"], kind="mergesort").reset_index(drop=True)
    frame["pos"] = frame.groupby("session_id").cumcount().astype(np.int32)
    if targets_all_but_first:
        frame["is_target"] = frame["pos"] > 0
    return frame


def _drop_short(frame: pd.DataFrame, min_len: int = 2) -> tuple[pd.DataFrame, int]:
    sizes = frame.groupby("session_id")["track_id"].transform("size")
    keep = (sizes >= min_len).to_numpy()
    return frame[keep], int((~keep).sum())


def check_fractions(val_frac: float, test_frac: float) -> None:
    if not (0 < test_frac < 1 and 0 <= val_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"fractions must satisfy 0 < test_frac, 0 <= val_frac, val+test < 1 (got {val_frac}, {test_frac})")


def period_sizes(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """Sessions of the test and validation periods, of `n` sessions."""
    n_test = max(1, int(round(n * test_frac)))
    n_val = int(round(n * val_frac)) if val_frac > 0 else 0
    if n - n_test - n_val < 1:
        raise ValueError(f"too few sessions ({n}) for val_frac={val_frac}, test_frac={test_frac}")
    return n_test, n_val


def temporal_split(sessions: pd.DataFrame, val_frac: float, test_frac: float) -> tuple[dict[str, pd.DataFrame], dict]:
    check_fractions(val_frac, test_frac)
    starts = sessions.groupby("session_id")["ts"].min().sort_values(kind="mergesort")
    n = len(starts)
    n_test, n_val = period_sizes(n, val_frac, test_frac)
    t_test = starts.iloc[n - n_test]
    t_val = starts.iloc[n - n_test - n_val] if n_val else t_test
    start_of = sessions["session_id"].map(starts)
    part = np.where(start_of >= t_test, "test", np.where(start_of >= t_val, "val", "train"))
    frames, truncated = {}, 0
    for name, cutoff in (("train", t_val), ("val", t_test), ("test", None)):
        f = sessions[part == name]
        if cutoff is not None:
            late = (f["ts"] >= cutoff).to_numpy()
            truncated += int(late.sum())
            f = f[~late]
        frames[name] = f
    meta = {"val_start": str(t_val), "test_start": str(t_test), "events_truncated_at_cutoffs": truncated}
    return frames, meta


def leave_one_out_split(sessions: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], dict]:
    ev = sessions.sort_values(["user_id", "ts", "session_id", "pos"], kind="mergesort").reset_index(drop=True)
    ev["upos"] = ev.groupby("user_id").cumcount()
    n_user = ev.groupby("user_id")["track_id"].transform("size").to_numpy()
    upos = ev["upos"].to_numpy()
    eligible = n_user >= 3
    user_code = pd.factorize(ev["user_id"])[0].astype(np.int64)
    n_users = int(user_code.max()) + 1 if len(user_code) else 0

    def user_sequences(mask: np.ndarray, last_is_target: bool, offset: int) -> pd.DataFrame:
        f = ev[mask].copy()
        f["session_id"] = user_code[mask] + offset
        f["pos"] = f["upos"]
        f = f.drop(columns="upos")
        if last_is_target:
            last = f.groupby("session_id")["pos"].transform("max")
            f["is_target"] = (f["pos"] == last).to_numpy()
        return f

    train = user_sequences(np.where(eligible, upos < n_user - 2, True), False, 0)
    val = user_sequences(eligible & (upos < n_user - 1), True, n_users)
    test = user_sequences(eligible, True, 2 * n_users)
    meta = {"users_eligible": int(ev.loc[eligible, "user_id"].nunique()), "events_truncated_at_cutoffs": 0}
    return {"train": train, "val": val, "test": test}, meta


def check_split_args(strategy: str, vocab_min_freq: int, vocab_scope: str) -> str:
    """Refuse an unknown strategy or scope, or vocab_min_freq < 1; return the scope."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    vocab_scope = parse_vocab_scope(vocab_scope)
    if vocab_min_freq < 1:
        raise ValueError("vocab_min_freq must be >= 1")
    return vocab_scope


def check_vocab(vocab: Vocabulary, vocab_min_freq: int, vocab_scope: str) -> None:
    if len(vocab) == 0:
        period = "training" if vocab_scope == "train" else "training and validation"
        raise ValueError(f"no track is played {vocab_min_freq}+ times in the {period} period; lower vocab_min_freq")


def make_splits(
    sessions: pd.DataFrame,
    strategy: str = "temporal",
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    vocab_min_freq: int = 5,
    vocab_scope: str = "train",
) -> SplitResult:
    vocab_scope = check_split_args(strategy, vocab_min_freq, vocab_scope)
    if sessions.empty:
        raise ValueError("no sessions to split")
    if strategy == "temporal":
        frames, meta = temporal_split(sessions, val_frac, test_frac)
        dropped = 0
        for name in frames:
            frames[name], d = _drop_short(frames[name])
            dropped += d
            frames[name] = _finish(frames[name])
        meta["events_dropped_short_after_cut"] = dropped
    else:
        frames, meta = leave_one_out_split(sessions)
        frames = {
            "train": _finish(frames["train"]),
            "val": _finish(frames["val"], targets_all_but_first=False),
            "test": _finish(frames["test"], targets_all_but_first=False),
        }
    if frames["train"].empty:
        raise ValueError("the training split is empty")
    vocab = Vocabulary.build(vocab_events(frames, vocab_scope), vocab_min_freq)
    check_vocab(vocab, vocab_min_freq, vocab_scope)
    meta.update(strategy=strategy, val_frac=val_frac, test_frac=test_frac, vocab_min_freq=vocab_min_freq,
                vocab_scope=vocab_scope)
    return SplitResult(frames=frames, vocab=vocab, meta=meta)


def unknown_share(frame: pd.DataFrame, vocab: Vocabulary, targets_only: bool = False) -> float:
    if targets_only and "is_target" in frame:
        frame = frame[frame["is_target"]]
    if frame.empty:
        return 0.0
    return float(np.mean(vocab.encode(frame["track_id"].tolist()) == 0))
