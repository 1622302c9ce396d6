"""The train loop: batching, determinism, early stopping and resuming."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from playlistai.data.sequences import (
    encode_sessions,
    load_split,
    load_vocab,
    next_track_cases,
    split_cases,
    tail_sessions,
)
from playlistai.models import build_model
from playlistai.training.loop import TrainConfig, epoch_batches, fit, seed_everything, validation_subset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run_fit(small_model_config):
    def run(data, config, family="sasrec", **kw):
        seed_everything(config.seed)
        model = build_model(small_model_config(data.vocab.size, family))
        return model, fit(model, data.train, data.val, config, item_counts=data.vocab.popularity(), **kw)

    return run


def test_epoch_batches_shard_evenly_and_cover_every_window():
    lengths = np.random.default_rng(0).integers(1, 20, size=1001)
    one = epoch_batches(lengths, batch_size=64, epoch=1, seed=0)
    assert sorted(np.concatenate(one).tolist()) == list(range(1001))
    shards = [epoch_batches(lengths, batch_size=64, epoch=1, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])                 # DDP steps in lockstep
    assert all(len(b) <= 32 for s in shards for b in s)     # the global batch is split
    assert set(np.concatenate([np.concatenate(s) for s in shards]).tolist()) == set(range(1001))
    assert [b.tolist() for b in one] != [b.tolist() for b in epoch_batches(lengths, 64, epoch=2, seed=0)]


def test_training_is_deterministic_under_a_seed(tiny_training_data, run_fit, small_train_config):
    config = small_train_config(epochs=2)
    _, a = run_fit(tiny_training_data, config)
    _, b = run_fit(tiny_training_data, config)
    keys = ["train_loss", "val_ndcg_at_10", "val_recall_at_20"]
    assert [[r[k] for k in keys] for r in a.history] == [[r[k] for k in keys] for r in b.history]
    for k in a.best_state:
        assert torch.equal(a.best_state[k], b.best_state[k])


def test_learns_and_logs_every_epoch_metric(tiny_training_data, run_fit, small_train_config):
    _, result = run_fit(tiny_training_data, small_train_config(epochs=3), family="gru4rec")
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for key in ("train_loss", "val_recall_at_20", "val_ndcg_at_10", "lr", "epoch_seconds", "train_events_per_second"):
        assert all(np.isfinite(r[key]) for r in result.history), key
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # better than popularity-blind guessing over ~300 tracks (recall@20 ~ 0.07)
    assert max(r["val_recall_at_20"] for r in result.history) > 0.12


def test_early_stopping_keeps_the_best_epoch(tiny_training_data, run_fit, small_train_config):
    # an absurd learning rate makes validation worse after the first epoch
    config = small_train_config(epochs=6, patience=1, lr=0.5, warmup_steps=1)
    model, result = run_fit(tiny_training_data, config)
    scores = [r["val_ndcg_at_10"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmax(scores))
    if result.stopped_early:
        assert len(scores) == result.best_epoch + 1
    assert result.best_metrics["val_ndcg_at_10"] == max(scores)


def _state_after_first_epoch(run_fit, data, config) -> dict:
    """The resumable state a run saves after its first epoch, the run then interrupted."""
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_first_epoch(record, snapshot):
        saved.update(snapshot())
        raise Stop

    with pytest.raises(Stop):
        run_fit(data, config, on_epoch_end=stop_after_first_epoch)
    assert saved["epoch"] == 1
    return saved


def test_resume_continues_where_the_run_stopped(tiny_training_data, run_fit, small_train_config):
    config = small_train_config(epochs=3)
    _, straight = run_fit(tiny_training_data, config)
    saved = _state_after_first_epoch(run_fit, tiny_training_data, config)

    trained = []
    _, resumed = run_fit(tiny_training_data, config, resume_state=saved,
                      on_epoch_end=lambda record, snapshot: trained.append(record["epoch"]))
    assert trained == [2, 3]                                  # epoch 1 was not trained again
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    # the resumed run is the run that was never interrupted
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert [r["val_ndcg_at_10"] for r in resumed.history] == [r["val_ndcg_at_10"] for r in straight.history]


def test_resume_refuses_another_model(tiny_training_data, run_fit, small_train_config):
    config = small_train_config(epochs=1)
    saved = {}
    run_fit(tiny_training_data, config, on_epoch_end=lambda record, snapshot: saved.update(snapshot()))
    with pytest.raises(ValueError, match="model config differs"):
        run_fit(tiny_training_data, small_train_config(epochs=2), family="gru4rec", resume_state=saved)


def test_sparse_item_updates_learn_and_resume_exactly(tiny_training_data, run_fit, small_train_config):
    config = small_train_config(epochs=3, loss="sampled", num_negatives=64, item_updates="sparse")
    _, straight = run_fit(tiny_training_data, config)
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"]
    saved = _state_after_first_epoch(run_fit, tiny_training_data, config)
    assert saved["item_optimizer"] is not None
    _, resumed = run_fit(tiny_training_data, config, resume_state=saved)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    # a sparse run's state does not resume as a dense run
    with pytest.raises(ValueError, match="item_updates=sparse"):
        run_fit(tiny_training_data, small_train_config(epochs=3, loss="sampled", num_negatives=64,
                                                       item_updates="dense"), resume_state=saved)


def test_sampled_softmax_trains(tiny_training_data, run_fit, small_train_config):
    _, result = run_fit(tiny_training_data, small_train_config(epochs=2, loss="sampled", num_negatives=64))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("kw, message", [(dict(epochs=-1), "epochs must be >= 1"),
                                         (dict(loss="bpr"), "loss must be one of"),
                                         (dict(item_updates="lazy"), "item_updates must be one of"),
                                         (dict(loss="ce", item_updates="sparse"), "needs loss=sampled"),
                                         (dict(precision="fp16"), "precision must be one of"),
                                         (dict(max_minutes=-1), "max_minutes must be >= 0"),
                                         (dict(patience=-2), "patience")])
def test_invalid_train_config(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw).validate()


def test_max_minutes_stops_before_an_epoch_that_would_overrun(tiny_training_data, run_fit, small_train_config):
    # a budget of a few milliseconds: the first epoch always runs, no second one fits
    _, result = run_fit(tiny_training_data, small_train_config(epochs=5, max_minutes=1e-5))
    assert result.epochs_run == 1 and result.stop_reason == "max_minutes"
    assert result.best_epoch == 1 and result.best_state
    _, unbounded = run_fit(tiny_training_data, small_train_config(epochs=2))
    assert unbounded.epochs_run == 2 and unbounded.stop_reason == "epochs"
    assert unbounded.history[-1]["elapsed_minutes"] > unbounded.history[0]["elapsed_minutes"] > 0


class _Clock:
    """Stands in for the loop's `time`: every reading is `tick` seconds after the last one."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_the_lr_anneals_to_zero_as_the_budget_ends(tiny_training_data, run_fit, small_train_config, monkeypatch):
    import playlistai.training.loop as loop

    # 4 clock readings per epoch (training and validation, each timed) at 15 s: 30 s epochs,
    # so a 3-minute budget fits exactly 6 of them
    monkeypatch.setattr(loop, "time", _Clock(15.0))
    _, annealed = run_fit(tiny_training_data, small_train_config(epochs=20, max_minutes=3, patience=0, warmup_steps=1))
    lrs = [r["lr"] for r in annealed.history]
    assert annealed.epochs_run == 6 and annealed.stop_reason == "max_minutes"
    assert lrs[0] == pytest.approx(small_train_config().lr)          # the first epoch times the rest
    assert all(b < a for a, b in zip(lrs, lrs[1:], strict=False))      # then it only falls...
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)                    # ...to 0 at the budget's end
    assert lrs[2] == pytest.approx(lrs[0] * 3 / 5, rel=1e-6)           # linearly over epochs 2-6

    monkeypatch.setattr(loop, "time", _Clock(15.0))
    _, constant = run_fit(tiny_training_data, small_train_config(
        epochs=20, max_minutes=3, patience=0, warmup_steps=1, anneal_to_budget=False))
    assert constant.epochs_run == 6 and {r["lr"] for r in constant.history} == {lrs[0]}


def test_bf16_autocast_trains_like_fp32(tiny_training_data, run_fit, small_train_config):
    _, fp32 = run_fit(tiny_training_data, small_train_config(epochs=2, precision="fp32"))
    _, bf16 = run_fit(tiny_training_data, small_train_config(epochs=2, precision="bf16"))
    assert np.isfinite(bf16.history[-1]["train_loss"])
    assert abs(bf16.history[-1]["train_loss"] - fp32.history[-1]["train_loss"]) < 0.05 * fp32.history[-1]["train_loss"]
    assert bf16.history[-1]["val_recall_at_20"] > 0.5 * fp32.history[-1]["val_recall_at_20"]


def test_precision_auto_takes_bf16_only_where_the_hardware_runs_it():
    from playlistai.training.precision import autocast_dtype, fast_bf16

    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if fast_bf16(cpu) else None)
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("fp8", cpu)


def test_a_plateau_halves_the_learning_rate(tiny_training_data, run_fit, small_train_config):
    # an absurd learning rate makes every epoch after the first worse: each one halves the lr
    config = small_train_config(epochs=3, patience=0, lr=0.5, warmup_steps=1, plateau_lr_factor=0.5)
    _, result = run_fit(tiny_training_data, config)
    scores = [r["val_ndcg_at_10"] for r in result.history]
    bad = sum(scores[i] <= max(scores[:i]) for i in range(1, len(scores)))
    assert bad >= 1
    assert result.history[-1]["lr"] == pytest.approx(0.5 * 0.5 ** bad_before_last(scores))


def bad_before_last(scores):
    """Epochs before the last that did not improve on the best so far (each decayed the lr)."""
    return sum(scores[i] <= max(scores[:i]) for i in range(1, len(scores) - 1))


def test_validation_cases_read_in_batches_of_sessions_are_those_of_the_whole_split(tiny_data_dir):
    """split_cases reads the split 40 plays at a time (sessions straddle the batches) and builds
    only the sampled cases: the same cases, and the same validation subset, as the whole split."""
    vocab = load_vocab(tiny_data_dir)
    every = next_track_cases(encode_sessions(load_split(tiny_data_dir, "val"), vocab), 20)
    assert len(every) > 300
    got = split_cases(tiny_data_dir, "val", vocab, 20, batch_rows=40)
    for name in every.__dataclass_fields__:
        assert np.array_equal(getattr(got, name), getattr(every, name)), name
    sampled = split_cases(tiny_data_dir, "val", vocab, 20, max_cases=300, seed=3, batch_rows=40)
    assert len(sampled) == 300
    want, got = validation_subset(every, 300, seed=3), validation_subset(sampled, 300, seed=3)
    for name in want.__dataclass_fields__:
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert len(split_cases(tiny_data_dir, "val", vocab, 20, max_cases=10 * len(every), seed=3)) == len(every)


def test_the_last_sessions_read_from_the_end_of_a_split_are_those_of_the_whole_split(tiny_data_dir, tmp_path):
    """tail_sessions reads row groups from the end (sessions straddle them, rare tracks drop out)
    and gives the last n encoded sessions of the whole split, for every n up to past its end."""
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "splits", data_dir / "splits")
    train = load_split(tiny_data_dir, "train")
    train.to_parquet(data_dir / "splits" / "train.parquet", index=False, row_group_size=97)
    assert pq.ParquetFile(data_dir / "splits" / "train.parquet").num_row_groups > 20
    vocab = load_vocab(data_dir)
    whole = encode_sessions(train, vocab)
    assert whole.unknown_events > 0
    for n in (1, 2, 7, 50, len(whole) - 1, len(whole), len(whole) + 5):
        got = tail_sessions(data_dir, "train", vocab, n)
        assert np.array_equal(got.session_ids, whole.session_ids[-n:]), n
        for name in ("items", "hours", "dows", "is_target", "positions"):
            want = getattr(whole, name)[-n:]
            assert len(getattr(got, name)) == len(want), (n, name)
            assert all(np.array_equal(a, b) for a, b in zip(getattr(got, name), want, strict=True)), (n, name)
    assert tail_sessions(data_dir, "train", vocab, 5).total_events < len(train)     # it stopped early
