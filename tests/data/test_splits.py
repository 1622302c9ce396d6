import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playlistai.data.sequences import SequenceDataset, encode_sessions, next_track_cases
from playlistai.data.sessionize import sessionize
from playlistai.data.splits import make_splits


@st.composite
def event_logs(draw):
    n_users = draw(st.integers(1, 6))
    rows = []
    for u in range(n_users):
        t = draw(st.integers(0, 10_000))
        for _ in range(draw(st.integers(1, 25))):
            t += draw(st.sampled_from([30, 200, 2000, 3000, 20_000]))
            rows.append((f"u{u}", f"t{draw(st.integers(0, 12))}", t))
    df = pd.DataFrame(rows, columns=["user_id", "track_id", "ts"])
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True)
    df["artist_id"] = "a"
    df["genre"] = None
    return df


fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(event_logs(), st.floats(0.0, 0.4), st.floats(0.05, 0.4), st.integers(1, 3))
def test_temporal_split_partitions_sessions_and_never_leaks_the_future(ev, val_frac, test_frac, min_freq):
    sessions, _ = sessionize(ev)
    if sessions["session_id"].nunique() < 4:
        return
    try:
        res = make_splits(sessions, "temporal", val_frac, test_frac, min_freq)
    except ValueError:
        return  # too little data for these fractions, or an empty vocabulary: refused with a message
    tr, va, te = (res.frames[k] for k in ("train", "val", "test"))
    ids = [set(f["session_id"]) for f in (tr, va, te)]
    # a partition: no session in two splits, and every event of a split comes from `sessions`
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert (ids[0] | ids[1] | ids[2]) <= set(sessions["session_id"])
    # every kept event is an original event
    key = ["session_id", "track_id", "ts"]
    allev = sessions[key].merge(pd.concat([tr, va, te])[key], how="right", indicator=True)
    assert (allev["_merge"] == "both").all()
    # time order: nothing of a later period is in an earlier one
    if len(va):
        assert tr["ts"].max() < va["ts"].min()
    if len(te):
        assert tr["ts"].max() < te["ts"].min()
        if len(va):
            assert va["ts"].max() < te["ts"].min()
    # the vocabulary is built from training events only
    train_counts = tr["track_id"].value_counts()
    assert set(res.vocab.track_ids) <= set(train_counts[train_counts >= min_freq].index)
    for f in res.frames.values():
        if len(f):
            assert f.groupby("session_id").size().min() >= 2


@fast
@given(event_logs())
def test_leave_one_out_holds_out_the_last_two_plays(ev):
    sessions, _ = sessionize(ev)
    if sessions.empty:
        return
    try:
        res = make_splits(sessions, "leave_one_out", vocab_min_freq=1)
    except ValueError:
        return
    tr, va, te = (res.frames[k] for k in ("train", "val", "test"))
    for user, plays in sessions.sort_values("ts", kind="mergesort").groupby("user_id"):
        if len(plays) < 3:
            continue
        test_target = te[(te["user_id"] == user) & te["is_target"]]
        val_target = va[(va["user_id"] == user) & va["is_target"]]
        assert len(test_target) == 1 and len(val_target) == 1
        assert test_target["ts"].iloc[0] == plays["ts"].iloc[-1]
        assert val_target["ts"].iloc[0] == plays["ts"].iloc[-2]
        # neither target reaches training, and the test target is not in validation
        assert len(tr[tr["user_id"] == user]) == len(plays) - 2
        assert tr[tr["user_id"] == user]["ts"].max() <= plays["ts"].iloc[-3]
        assert va[va["user_id"] == user]["ts"].max() < test_target["ts"].iloc[0] or (
            va[va["user_id"] == user]["ts"].max() == test_target["ts"].iloc[0]
            and len(va[va["user_id"] == user]) == len(plays) - 1
        )


def test_bad_split_parameters_are_refused(tiny_data_dir):
    sessions = pd.read_parquet(tiny_data_dir / "processed" / "sessions.parquet")
    with pytest.raises(ValueError, match="strategy"):
        make_splits(sessions, "random")
    with pytest.raises(ValueError, match="fractions"):
        make_splits(sessions, "temporal", 0.6, 0.5)
    with pytest.raises(ValueError, match="vocab_min_freq"):
        make_splits(sessions, "temporal", 0.1, 0.1, 10**9)


def test_sequences_train_on_every_position_with_target_context(tiny_data_dir):
    from playlistai.data.sequences import load_split, load_vocab

    vocab = load_vocab(tiny_data_dir)
    enc = encode_sessions(load_split(tiny_data_dir, "train"), vocab)
    ds = SequenceDataset(enc, max_seq_len=5)
    # every (input, next) pair of known tracks is a target exactly once
    assert ds.num_targets == sum(len(x) - 1 for x in enc.items if len(x) > 1)
    s = next(i for i, x in enumerate(enc.items) if len(x) >= 3)
    item = next(ds[i] for i, w in enumerate(ds.windows) if w[0] == s)
    inputs, targets = item["input_ids"].numpy(), item["target_ids"].numpy()
    valid = targets > 0
    assert np.array_equal(inputs[valid][1:], targets[valid][:-1])   # shifted by one
    n = valid.sum()
    last = ds.windows[[w[0] for w in ds.windows].index(s)]
    assert item["hours"].numpy()[valid].tolist() == enc.hours[s][last[1] + 1 : last[2]].tolist()[-n:]
    assert inputs[0] == 0 or len(enc.items[s]) > 5  # left padding


def test_next_track_cases_use_only_the_past(tiny_data_dir):
    from playlistai.data.sequences import load_split, load_vocab

    vocab = load_vocab(tiny_data_dir)
    enc = encode_sessions(load_split(tiny_data_dir, "test"), vocab)
    cases = next_track_cases(enc, max_seq_len=4)
    assert len(cases) > 0
    for i in range(0, len(cases), 17):
        s, t = cases.session_index[i], cases.history_lengths[i]
        assert cases.targets[i] == enc.items[s][t]
        hist = cases.histories[i]
        assert hist[hist > 0].tolist() == enc.items[s][max(0, t - 4) : t].tolist()
        assert cases.hours[i] == enc.hours[s][t]
