"""SASRec and GRU4Rec: the shared interface, causality, padding invariance, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from playlistai.models import GRU4Rec, ModelConfig, SASRec, build_model
from playlistai.training.losses import FullSoftmaxLoss

FAMILIES = ["sasrec", "gru4rec"]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_model(family: str, vocab_size: int = 40, use_context: bool = True, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=vocab_size, d_model=16, n_layers=2, n_heads=2,
                      dropout=0.0, max_seq_len=12, use_context=use_context, **kw)
    return build_model(cfg).eval()


def random_batch(B=3, L=8, V=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, L), generator=g)
    ids[0, :3] = 0                              # a left-padded row
    return ids, torch.randint(0, 24, (B, L), generator=g), torch.randint(0, 7, (B, L), generator=g)


def test_build_model_and_config_round_trip():
    assert isinstance(build_model(ModelConfig(family="transformer", vocab_size=5, d_model=8, n_heads=2)), SASRec)
    assert isinstance(build_model(ModelConfig(family="gru4rec", vocab_size=5, d_model=8)), GRU4Rec)
    cfg = ModelConfig(family="transformer", vocab_size=9, d_model=8, n_heads=4, use_context=False)
    assert cfg.family == "sasrec"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(family="lstm"), "unknown model 'lstm'"),
        (dict(family="sasrec", d_model=10, n_heads=3), "n_heads (3) must divide d_model (10)"),
        (dict(family="sasrec", dropout=1.5), "dropout"),
        (dict(family="sasrec", cosine_scale=-1.0), "cosine_scale must be >= 0"),
    ],
)
def test_invalid_model_config_names_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(vocab_size=10, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_interface(family):
    model = tiny_model(family)
    ids, hours, dows = random_batch()
    hidden = model(ids, hours, dows)
    assert hidden.shape == (3, 8, 16)
    table = model.item_embeddings()
    assert table.shape == (40, 16)
    assert torch.all(table[0] == 0)            # PAD row
    uv = model.user_vectors(ids, hours[:, -1], dows[:, -1])
    scores = model.score_batch(ids, hours[:, -1], dows[:, -1])
    assert scores.shape == (3, 40)
    assert torch.isneginf(scores[:, 0]).all()
    # scoring is a pure inner product, so an inner-product index over the table ranks the same
    torch.testing.assert_close(scores[:, 1:], (uv @ table.T)[:, 1:])
    torch.testing.assert_close(uv, hidden[:, -1])


@pytest.mark.parametrize("family", FAMILIES)
def test_cosine_scores_are_scaled_cosine_similarities(family):
    model = tiny_model(family, cosine_scale=12.0)
    with torch.no_grad():                      # tracks of very different norms, as popularity makes them
        model.item_emb.weight[1:] *= torch.linspace(0.1, 10.0, 39)[:, None]
    ids, hours, dows = random_batch()
    plain = tiny_model(family)
    plain.load_state_dict(model.state_dict())  # same weights, scored by inner product
    raw_users = plain.user_vectors(ids, hours[:, -1], dows[:, -1])
    uv = model.user_vectors(ids, hours[:, -1], dows[:, -1])
    table = model.item_embeddings()
    torch.testing.assert_close(uv.norm(dim=1), torch.full((3,), 12.0))
    torch.testing.assert_close(table[1:].norm(dim=1), torch.ones(39))
    assert torch.all(table[0] == 0)            # PAD stays the zero vector
    raw_table = model.item_emb.weight
    want = 12.0 * torch.nn.functional.cosine_similarity(raw_users[:, None, :], raw_table[None, 1:, :], dim=2)
    scores = model.score_batch(ids, hours[:, -1], dows[:, -1])
    torch.testing.assert_close(scores[:, 1:], want)
    # still one inner product of the served vectors: an inner-product index ranks the same
    torch.testing.assert_close(scores[:, 1:], (uv @ table.T)[:, 1:])


def test_sasrec_is_causal():
    model = tiny_model("sasrec")
    ids, hours, dows = random_batch()
    base = model(ids, hours, dows)
    for t in range(4, 8):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] % 39) + 1                     # another real track
        ch_hours = hours.clone()
        ch_hours[:, t] = (ch_hours[:, t] + 5) % 24
        out = model(changed, ch_hours, dows)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_never_changes_the_output(family):
    model = tiny_model(family)
    ids, hours, dows = random_batch()
    out = model(ids, hours, dows)
    pad = lambda x, n: torch.cat([torch.zeros(x.shape[0], n, dtype=x.dtype), x], dim=1)  # noqa: E731
    padded = model(pad(ids, 4), pad(hours, 4), pad(dows, 4))
    real = ids != 0
    torch.testing.assert_close(padded[:, 4:][real], out[real], rtol=0, atol=1e-5)
    # serving pads to max_seq_len, evaluation to the batch: the scores must not care
    torch.testing.assert_close(
        model.score_batch(pad(ids, 4), hours[:, -1], dows[:, -1]), model.score_batch(ids, hours[:, -1], dows[:, -1]),
        rtol=0, atol=1e-5,
    )
    # and a short history scores the same alone or in a batch with longer ones
    alone = model.score_batch(ids[:1, 3:], hours[:1, -1], dows[:1, -1])
    torch.testing.assert_close(alone, model.score_batch(ids, hours[:, -1], dows[:, -1])[:1], rtol=0, atol=1e-5)
    # a history without padding (a served one, trimmed) attends through SDPA's causal kernel, a
    # padded one through the mask: the same outputs
    row, row_hours, row_dows = (x[1:2, -6:] for x in (ids, hours, dows))
    assert bool((row != 0).all())
    torch.testing.assert_close(model(pad(row, 3), pad(row_hours, 3), pad(row_dows, 3))[:, 3:],
                               model(row, row_hours, row_dows), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_context_changes_scores_only_when_used(family):
    ids, hours, dows = random_batch()
    with_ctx, without = tiny_model(family), tiny_model(family, use_context=False)
    for p in with_ctx.context.parameters():                      # zero-initialized: give it a say
        torch.nn.init.normal_(p, std=0.5)
    a = with_ctx.score_batch(ids, torch.full((3,), 7), dows[:, -1])
    b = with_ctx.score_batch(ids, torch.full((3,), 19), dows[:, -1])
    assert not torch.allclose(a, b)
    a = without.score_batch(ids, torch.full((3,), 7), dows[:, -1])
    b = without.score_batch(ids, torch.full((3,), 19), dows[:, -1])
    torch.testing.assert_close(a, b)


def _train(model, ids, hours, dows, targets, steps, lr=1e-2):
    """A bare loop (the product loop is tested in tests/training): full softmax, no smoothing."""
    loss_fn = FullSoftmaxLoss(label_smoothing=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = loss_fn(model(ids, hours, dows), model.item_embeddings(), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _prefix_cases(seqs: np.ndarray):
    """Every (left-padded prefix -> next track) case of a set of sequences."""
    n, L = seqs.shape
    hist = np.zeros((n * (L - 1), L), dtype=np.int64)
    targets = np.zeros(n * (L - 1), dtype=np.int64)
    row = 0
    for s in seqs:
        for t in range(1, L):
            hist[row, L - t :] = s[:t]
            targets[row] = s[t]
            row += 1
    return torch.from_numpy(hist), torch.from_numpy(targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_overfits_a_tiny_deterministic_set_to_recall_at_1(family):
    # 16 sequences of 6 distinct tracks, no track shared: every next track is fully determined
    seqs = np.arange(1, 97).reshape(16, 6)
    ids, targets = torch.from_numpy(seqs[:, :-1]), torch.from_numpy(seqs[:, 1:])
    zeros = torch.zeros_like(ids)
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, vocab_size=97, d_model=32, n_layers=1, n_heads=2,
                                    dropout=0.0, max_seq_len=8))
    model = _train(model, ids, zeros, zeros, targets, steps=200)
    hist, want = _prefix_cases(seqs)
    top1 = model.score_batch(hist, torch.zeros(len(hist), dtype=torch.long), torch.zeros(len(hist), dtype=torch.long)).argmax(1)
    assert (top1 == want).float().mean().item() == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_context_lifts_recall_when_the_next_track_depends_on_the_hour(family):
    # each play's track is fixed by its hour (track = hour + 1), hours are random: the history
    # carries no information about the next track, the context carries all of it. Evaluated on
    # fresh sequences, so a model cannot pass by memorizing training histories.
    rng = np.random.default_rng(0)

    def sample(n):
        hours = torch.from_numpy(rng.integers(0, 24, size=(n, 9)))
        dows = torch.from_numpy(rng.integers(0, 7, size=(n, 8)))
        tracks = hours + 1
        return tracks[:, :-1], tracks[:, 1:], hours[:, 1:], dows

    train, test = sample(64), sample(200)
    recall = {}
    for use_context in (True, False):
        torch.manual_seed(0)
        model = build_model(ModelConfig(family=family, vocab_size=25, d_model=16, n_layers=1, n_heads=2,
                                        dropout=0.0, max_seq_len=8, use_context=use_context))
        ids, targets, ctx, dows = train
        model = _train(model, ids, ctx, dows, targets, steps=150)
        ids, targets, ctx, dows = test
        top1 = model.score_batch(ids, ctx[:, -1], dows[:, -1]).argmax(1)
        recall[use_context] = (top1 == targets[:, -1]).float().mean().item()
    assert recall[True] >= 0.95, recall
    assert recall[True] - recall[False] >= 0.5, recall
