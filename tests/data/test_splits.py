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


def _sessions_with_a_track_first_seen_in_validation() -> pd.DataFrame:
    """Ten one-session users an hour apart: 7 train (tracks a, b), 2 val (a, c, d), 1 test (a, c, b, z).
    `c` is played only in the validation period, `z` only in the test period."""
    plays = [["a", "b", "a"]] * 7 + [["a", "c", "d"], ["c", "a"], ["a", "c", "b", "z"]]
    rows = [(f"u{i}", track, 3600 * i + 60 * j) for i, tracks in enumerate(plays) for j, track in enumerate(tracks)]
    ev = pd.DataFrame(rows, columns=["user_id", "track_id", "ts"])
    ev["ts"] = pd.to_datetime(ev["ts"], unit="s", utc=True)
    ev["artist_id"], ev["genre"] = "x", None
    return sessionize(ev)[0]


def test_vocab_scope_train_val_keeps_test_cases_of_tracks_first_seen_in_validation():
    sessions = _sessions_with_a_track_first_seen_in_validation()
    cases = {}
    for scope in ("train", "train_val"):
        res = make_splits(sessions, "temporal", val_frac=0.2, test_frac=0.1, vocab_min_freq=1, vocab_scope=scope)
        assert [res.frames[k]["session_id"].nunique() for k in ("train", "val", "test")] == [7, 2, 1]
        assert res.meta["vocab_scope"] == scope
        enc = encode_sessions(res.frames["test"], res.vocab)
        cases[scope] = next_track_cases(enc, max_seq_len=5)
        assert "z" not in res.vocab  # never a track of the test period
    train_only = make_splits(sessions, "temporal", 0.2, 0.1, 1, "train").vocab
    both = make_splits(sessions, "temporal", 0.2, 0.1, 1, "train_val").vocab
    assert sorted(train_only.track_ids) == ["a", "b"]
    assert sorted(both.track_ids) == ["a", "b", "c", "d"]
    # counts cover the scope: a is played 14 times in training and twice in validation
    assert both.counts[both.index_of("a") - 1] == 16 and both.counts[both.index_of("c") - 1] == 2
    # test a c b z: with the train vocabulary only a -> b is a case (c unknown, z unknown);
    # with train_val a -> c and a c -> b are
    assert len(cases["train"]) == 1 and len(cases["train_val"]) == 2
    assert both.decode(cases["train_val"].targets) == ["c", "b"]


def test_vocab_scope_train_val_counts_leave_one_out_plays_once():
    ev = pd.DataFrame({"user_id": ["u"] * 4, "track_id": ["x", "y", "z", "w"],
                       "ts": pd.to_datetime([0, 60, 120, 180], unit="s", utc=True), "artist_id": "a", "genre": None})
    sessions = sessionize(ev)[0]
    # validation repeats the training plays x y before its target z: each is still one play
    vocab = make_splits(sessions, "leave_one_out", vocab_min_freq=1, vocab_scope="train_val").vocab
    assert dict(zip(vocab.track_ids, vocab.counts.tolist(), strict=True)) == {"x": 1, "y": 1, "z": 1}


def test_unknown_vocab_scope_is_refused():
    sessions = _sessions_with_a_track_first_seen_in_validation()
    with pytest.raises(ValueError, match=r"vocab_scope: expected one of train, train_val, got 'all'"):
        make_splits(sessions, "temporal", 0.2, 0.1, 1, "all")


def test_splits_entry_point_logs_vocab_scope_and_refuses_a_bad_one(tmp_path):
    import json

    import mlflow
    from typer.testing import CliRunner

    from entrypoints.splits import app
    from playlistai.data.layout import DataLayout

    layout = DataLayout.of(tmp_path)
    layout.processed_dir.mkdir(parents=True)
    _sessions_with_a_track_first_seen_in_validation().to_parquet(layout.sessions)
    args = ["--data-dir", str(tmp_path), "--val-frac", "0.2", "--test-frac", "0.1", "--vocab-min-freq", "1"]

    bad = CliRunner().invoke(app, [*args, "--vocab-scope", "everything"])
    assert bad.exit_code == 2 and "vocab_scope: expected one of train, train_val" in bad.output
    assert not layout.splits_dir.exists()

    ok = CliRunner().invoke(app, [*args, "--vocab-scope", "train_val"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(layout.splits_meta.read_text())["vocab_scope"] == "train_val"
    run = mlflow.last_active_run()
    assert run.data.params["vocab_scope"] == "train_val"
    # of the test targets c, b, z only z (played in the test period alone) is unknown
    assert run.data.metrics["vocab_size"] == 4
    assert run.data.metrics["test_unknown_target_share"] == pytest.approx(1 / 3)
