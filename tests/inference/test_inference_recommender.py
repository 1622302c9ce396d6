"""The Recommender on a packaged tiny model: filters, cold start, ANN agreement, batching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from playlistai.data.sequences import encode_sessions, load_split, next_track_cases
from playlistai.inference import Recommendation, Recommender
from playlistai.inference import ann as ann_lib
from playlistai.inference.features import FEATURES


@pytest.fixture(scope="module")
def recommender(tiny_package) -> Recommender:
    return Recommender.from_directory(tiny_package)


@pytest.fixture(scope="module")
def test_requests(recommender, tiny_data_dir):
    """(tracks, hour, dow) of up to 200 test cases, as a client would send them."""
    vocab = recommender.vocab
    cases = next_track_cases(encode_sessions(load_split(tiny_data_dir, "test"), vocab), 50)
    rows = np.random.default_rng(0).permutation(len(cases))[:200]
    out = []
    for r in rows:
        history = cases.histories[r][cases.histories[r] > 0]
        out.append((vocab.decode(history), int(cases.hours[r]), int(cases.dows[r])))
    return out


def test_inference_recommends_k_new_tracks_and_reports_unknown(recommender):
    history = recommender.vocab.track_ids[:4]
    rec = recommender.recommend([*history, "not-a-track"], k=10, hour=21, dow=5)
    assert isinstance(rec, Recommendation)
    ids = [t for t, _ in rec.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not set(ids) & set(history)
    assert rec.unknown_tracks == ["not-a-track"] and rec.fallback is False
    scores = [s for _, s in rec.items]
    assert scores == sorted(scores, reverse=True)


def test_inference_exclude_seen_false_may_return_input(recommender):
    top = recommender.recommend(recommender.vocab.track_ids[:2], k=1, hour=8, dow=1, exclude_seen=False).items[0][0]
    # asking again with that very track as history: allowed back only without exclusion
    again = recommender.recommend([top], k=recommender.catalog_size, hour=8, dow=1, exclude_seen=False)
    assert top in [t for t, _ in again.items]
    excluded = recommender.recommend([top], k=recommender.catalog_size, hour=8, dow=1)
    assert top not in [t for t, _ in excluded.items]
    assert len(excluded.items) == recommender.catalog_size - 1


def test_inference_cold_start_uses_hourly_popularity(recommender):
    night = recommender.recommend(["nope-1", "nope-2"], k=20, hour=3, dow=2)
    evening = recommender.recommend([], k=20, hour=20, dow=2)
    assert night.fallback and evening.fallback
    assert night.unknown_tracks == ["nope-1", "nope-2"]
    assert len(night.items) == 20 and len({t for t, _ in night.items}) == 20
    assert [t for t, _ in night.items] != [t for t, _ in evening.items], "the table depends on the hour"


def test_inference_artist_cap(recommender):
    artists = dict(zip(recommender.vocab.track_ids, recommender.vocab.artist_ids, strict=True))
    for use_ann in (False, True):
        rec = recommender.recommend(recommender.vocab.track_ids[5:8], k=15, hour=12, dow=3,
                                    max_per_artist=1, use_ann=use_ann)
        named = [artists[t] for t, _ in rec.items]
        assert len(rec.items) == 15
        assert len(set(named)) == len(named)
    fallback = recommender.recommend([], k=10, hour=12, dow=3, max_per_artist=2)
    counts = np.unique([artists[t] for t, _ in fallback.items], return_counts=True)[1]
    assert counts.max() <= 2


def test_inference_uses_only_the_most_recent_max_seq_len_tracks(recommender):
    L = recommender.max_seq_len
    ids = recommender.vocab.track_ids
    long_history = [ids[i % 40] for i in range(L + 15)]
    full = recommender.recommend(long_history, k=5, hour=9, dow=0, exclude_seen=False)
    tail = recommender.recommend(long_history[-L:], k=5, hour=9, dow=0, exclude_seen=False)
    assert full.items == tail.items


def test_inference_batch_equals_single_requests(recommender, test_requests):
    reqs = test_requests[:20] + [(["unknown"], 4, 6)]
    batch = recommender.recommend_batch([r[0] for r in reqs], 10, [r[1] for r in reqs], [r[2] for r in reqs])
    for (tracks, hour, dow), answer in zip(reqs, batch, strict=True):
        single = recommender.recommend(tracks, 10, hour, dow)
        assert [t for t, _ in single.items] == [t for t, _ in answer.items]
        assert np.allclose([s for _, s in single.items], [s for _, s in answer.items], atol=1e-5)
        assert single.fallback == answer.fallback


def test_inference_ann_top20_overlaps_exact(recommender, test_requests):
    """The packaged FAISS index (params tuned and logged at packaging) agrees with exact search."""
    params = recommender.ann_params
    assert params.overlap_at_20 >= 0.95 and params.index_type in ann_lib.INDEX_TYPES
    tracks, hours, dows = ([r[i] for r in test_requests] for i in range(3))
    exact = recommender.recommend_batch(tracks, 20, hours, dows)
    # ann_candidates=20: the served ANN answer is FAISS's own top 20 (re-scored), no wider candidate net
    approx = recommender.recommend_batch(tracks, 20, hours, dows, use_ann=True, ann_candidates=20)
    overlaps = [len({t for t, _ in e.items} & {t for t, _ in a.items}) / 20 for e, a in zip(exact, approx, strict=True)]
    assert np.mean(overlaps) >= 0.95


def test_a_packaged_ivfpq_index_serves_the_exact_answers(tiny_checkpoint, tiny_data_dir, tmp_path, test_requests):
    """The large-catalog default forced on the tiny catalog: 4-bit codes, re-scored exactly, loaded
    from the package like any index; its answers are the exact path's."""
    from playlistai.registry.packaging import build_package

    build_package(tiny_checkpoint, tiny_data_dir, tmp_path, ann_index="ivfpq")
    recommender = Recommender.from_directory(tmp_path)
    params = recommender.ann_params
    assert params.index_type == "ivfpq" and params.pq_m == 16 and params.refine_k_factor == ann_lib.REFINE_K_FACTOR
    assert params.overlap_at_20 >= ann_lib.DEFAULT_TARGET_OVERLAP
    tracks, hours, dows = ([r[i] for r in test_requests] for i in range(3))
    exact = recommender.recommend_batch(tracks, 20, hours, dows)
    approx = recommender.recommend_batch(tracks, 20, hours, dows, use_ann=True)
    overlaps = [len({t for t, _ in e.items} & {t for t, _ in a.items}) / 20 for e, a in zip(exact, approx, strict=True)]
    assert np.mean(overlaps) >= 0.95
    # a track both paths return has the same score: the refine step scores exactly
    for e, a in zip(exact[:20], approx[:20], strict=True):
        exact_scores = dict(e.items)
        for track, score in a.items:
            if track in exact_scores:
                assert score == pytest.approx(exact_scores[track], abs=1e-4)


def test_catalogs_above_the_hnsw_limit_get_ivfpq():
    assert ann_lib.choose_index_type(ann_lib.HNSW_MAX_CATALOG) == "hnsw"
    assert ann_lib.choose_index_type(ann_lib.HNSW_MAX_CATALOG + 1) == "ivfpq"


def test_ann_asks_faiss_for_a_margin_over_k_not_for_the_largest_k(recommender, test_requests, monkeypatch):
    asked = []
    search = ann_lib.search

    def recording_search(index, params, queries, n_results):
        asked.append(n_results)
        return search(index, params, queries, n_results)

    monkeypatch.setattr(ann_lib, "search", recording_search)
    tracks, hour, dow = test_requests[0]
    seen = len(set(tracks))                      # seen tracks come back from FAISS and are dropped
    recommender.recommend(tracks, 10, hour, dow, use_ann=True)
    recommender.recommend(tracks, 10, hour, dow, use_ann=True, max_per_artist=2)
    recommender.recommend(tracks, 10, hour, dow, use_ann=True, ann_candidates=300)
    recommender.recommend(tracks, 10, hour, dow, use_ann=True, exclude_seen=False)
    assert asked == [20 + seen, 40 + seen, 300 + seen, 20]
    with pytest.raises(ValueError, match="ann_candidates must be >= 0"):
        recommender.recommend(tracks, 10, hour, dow, use_ann=True, ann_candidates=-1)


def test_inference_ivf_index_reaches_target_overlap(recommender):
    """The large-catalog index type, forced on the tiny catalog: tuning raises nprobe until it agrees."""
    with torch.inference_mode():
        items = recommender.model.item_embeddings()[1:].numpy()
    queries = np.random.default_rng(1).standard_normal((200, items.shape[1])).astype(np.float32)
    index, params = ann_lib.build_index(items, "ivf")
    params = ann_lib.tune(index, params, items, queries, target_overlap=0.95)
    assert params.index_type == "ivf" and params.ivf_nlist >= 1
    assert ann_lib.mean_overlap(ann_lib.search(index, params, queries, 20), ann_lib.exact_top(items, queries, 20)) >= 0.95


@pytest.mark.parametrize("index_type, breadth, target", [("ivf", "ivf_nprobe", 0.9),
                                                         ("ivfpq", "ivf_nprobe", 0.8),
                                                         ("hnsw", "hnsw_ef_search", 0.995)])
def test_tuning_settles_on_the_smallest_breadth_that_meets_the_target(index_type, breadth, target):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((6000, 32)).astype(np.float32)
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    exact = ann_lib.exact_top(items, queries, 20)
    index, params = ann_lib.build_index(items, index_type)
    start = getattr(params, breadth)
    params = ann_lib.tune(index, params, items, queries, target_overlap=target)
    tuned = getattr(params, breadth)
    assert tuned > start and params.overlap_at_20 >= target
    assert ann_lib.mean_overlap(ann_lib.search(index, params, queries, 20), exact) == params.overlap_at_20
    # an eighth narrower misses the target: the doubling's overshoot was bisected away
    narrower = dataclasses.replace(params, **{breadth: max(1, tuned * 8 // 9 - 1)})
    assert ann_lib.mean_overlap(ann_lib.search(index, narrower, queries, 20), exact) < target


def test_exact_top_in_chunks_is_the_exact_top():
    rng = np.random.default_rng(0)
    items, queries = rng.standard_normal((500, 8)).astype(np.float32), rng.standard_normal((37, 8)).astype(np.float32)
    whole = np.sort(ann_lib.exact_top(items, queries, 5), axis=1)
    chunked = np.sort(ann_lib.exact_top(items, queries, 5, chunk_bytes=4 * 500 * 3), axis=1)   # 3 queries a chunk
    assert np.array_equal(whole, chunked)
    assert np.array_equal(whole, np.sort(np.argsort(-(queries @ items.T), axis=1)[:, :5] + 1, axis=1))


def test_inference_rejects_bad_requests(recommender):
    for kwargs, word in [(dict(hour=24, dow=0), "hour"), (dict(hour=0, dow=7), "dow"),
                         (dict(hour=0, dow=0, k=0), "k must"), (dict(hour=0, dow=0, max_per_artist=0), "max_per_artist")]:
        call = {"k": 5, **kwargs}
        with pytest.raises(ValueError, match=word):
            recommender.recommend(["a"], **call)
    with pytest.raises(ValueError, match="list of track ids"):
        recommender.recommend("t000001", 5, 0, 0)


def test_inference_history_features_and_drift_reference(recommender):
    ids = recommender.vocab.track_ids
    f = recommender.history_features([ids[0], ids[-1], "zzz", "yyy"])
    assert f["history_length"] == 4 and f["known_length"] == 2 and f["unknown_share"] == 0.5
    assert 0 < f["mean_popularity_percentile"] <= 1
    assert recommender.history_features(["zzz"])["mean_popularity_percentile"] is None
    stats, sample = recommender.drift_reference
    assert stats["n_cases"] > 0 and set(stats["features"]) == set(FEATURES)
    for name in FEATURES:
        hist = stats["features"][name]["histogram"]
        assert sum(hist["counts"]) == stats["features"][name]["count"]
    assert list(sample.columns) == list(FEATURES) and 0 < len(sample) <= stats["n_cases"]
    assert sample["hour"].between(0, 23).all() and sample["unknown_share"].between(0, 1).all()


def test_inference_repeat_bonus_lifts_history_tracks_on_both_paths(tiny_package, test_requests):
    """With repeats allowed, exact and ANN answers rank as the model's own scores (bonus included)."""
    lifted = Recommender.from_directory(tiny_package)
    lifted.model.repeat_bonus.fill_(50.0)              # far above any score gap: history comes first
    vocab = lifted.vocab
    for tracks, hour, dow in test_requests[:10]:
        k = 20
        history = list(dict.fromkeys(tracks[-lifted.max_seq_len:]))
        ids = torch.as_tensor(np.asarray(vocab.encode(tracks))[-lifted.max_seq_len:])[None]
        scores = lifted.model.score_batch(ids, torch.tensor([hour]), torch.tensor([dow]))[0]
        want = [vocab.track_ids[i - 1] for i in torch.topk(scores, k).indices.tolist()]
        exact = [t for t, _ in lifted.recommend(tracks, k, hour, dow, exclude_seen=False).items]
        approx = [t for t, _ in lifted.recommend(tracks, k, hour, dow, exclude_seen=False, use_ann=True,
                                                 ann_candidates=k).items]
        assert exact == want
        assert set(history[:k]) <= set(approx[: len(history)])   # found although FAISS knows no bonus
        assert not set(history) & {t for t, _ in lifted.recommend(tracks, k, hour, dow).items}


@pytest.fixture(scope="module")
def mixed_package(tiny_checkpoint, tiny_data_dir, tmp_path_factory):
    """The tiny model with the training sessions' neighbours mixed in at a weight far above any
    score gap, packaged like any model."""
    from playlistai.models.checkpoint import load_checkpoint, save_checkpoint
    from playlistai.models.neighbours import SessionNeighbours
    from playlistai.registry.packaging import build_package

    model, vocab, config = load_checkpoint(tiny_checkpoint)
    train = encode_sessions(load_split(tiny_data_dir, "train"), vocab)
    model.neighbours = SessionNeighbours.fit(train.items, vocab.size)
    model.neighbour_weight.fill_(50.0)
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("mixed-ckpt"), model, vocab)
    out = tmp_path_factory.mktemp("mixed-package")
    build_package(checkpoint, tiny_data_dir, out)
    return out


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_inference_neighbour_votes_rank_as_the_model_on_both_paths(mixed_package, test_requests, exclude_seen):
    mixed = Recommender.from_directory(mixed_package)
    assert mixed.model.mixes_neighbours
    vocab, k = mixed.vocab, 20
    for tracks, hour, dow in test_requests[:10]:
        ids = torch.as_tensor(np.asarray(vocab.encode(tracks)))
        ids = ids[ids > 0][-mixed.max_seq_len:][None]
        scores = mixed.model.score_batch(ids, torch.tensor([hour]), torch.tensor([dow]))[0]
        if exclude_seen:
            scores[ids[0]] = float("-inf")
        want = [vocab.track_ids[i - 1] for i in torch.topk(scores, k).indices.tolist()]
        exact = [t for t, _ in mixed.recommend(tracks, k, hour, dow, exclude_seen=exclude_seen).items]
        assert exact == want
        # the voted tracks lead (weight 50), and FAISS, which knows no votes, still finds them all
        voted = mixed._neighbour_votes([ids[0].numpy()], [ids[0].numpy() if exclude_seen else np.zeros(0, np.int64)])
        lead = min(k, len(voted[0][0]))
        approx = [t for t, _ in mixed.recommend(tracks, k, hour, dow, exclude_seen=exclude_seen, use_ann=True,
                                                ann_candidates=k).items]
        assert lead > 0 and approx[:lead] == exact[:lead]


def test_inference_package_seals_the_neighbours_and_refuses_an_unsealed_file(mixed_package, tiny_package, tmp_path):
    import json
    import shutil

    from playlistai.inference.package import ModelPackageError

    manifest = json.loads((mixed_package / "manifest.json").read_text())
    assert "neighbours.npz" in manifest["files"]
    plain = tmp_path / "plain"
    shutil.copytree(tiny_package, plain)
    shutil.copyfile(mixed_package / "neighbours.npz", plain / "neighbours.npz")   # slipped in after sealing
    with pytest.raises(ModelPackageError, match="does not list neighbours.npz"):
        Recommender.from_directory(plain)
    mixed = tmp_path / "mixed"
    shutil.copytree(mixed_package, mixed)
    (mixed / "neighbours.npz").unlink()
    with pytest.raises(ModelPackageError, match="missing neighbours.npz"):
        Recommender.from_directory(mixed)


@pytest.fixture(scope="module")
def bf16_recommender(tiny_package) -> Recommender:
    return Recommender.from_directory(tiny_package, item_table_dtype="bfloat16")


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_inference_bfloat16_item_table_ranks_as_float32(recommender, bf16_recommender, test_requests, exclude_seen):
    """A bfloat16 table: scores stay float32, and the top 20 is float32's but for a swap of near-equal
    scores at its end (0.996 of it on this model; a broken product would share ~20/catalog)."""
    assert bf16_recommender._items.weights.dtype == torch.bfloat16
    overlaps = []
    for tracks, hour, dow in test_requests:
        exact = recommender.recommend(tracks, 20, hour, dow, exclude_seen=exclude_seen).items
        fast = bf16_recommender.recommend(tracks, 20, hour, dow, exclude_seen=exclude_seen).items
        overlaps.append(len({t for t, _ in exact} & {t for t, _ in fast}) / 20)
        reference = dict(exact)
        for track, score in fast:
            if track in reference:      # bfloat16 keeps 8 bits of mantissa: within 1 % of the score
                assert score == pytest.approx(reference[track], rel=0.01, abs=1e-3)
    assert np.mean(overlaps) >= 0.95 and min(overlaps) >= 0.85, (np.mean(overlaps), min(overlaps))


def test_inference_item_table_dtype_is_checked(tiny_package):
    with pytest.raises(ValueError, match=r"one of float32, bfloat16, got 'float16'"):
        Recommender.from_directory(tiny_package, item_table_dtype="float16")


def test_in_sorted_is_isin_for_a_sorted_set():
    from playlistai.inference.recommender import in_sorted

    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 300):
        ascending = np.unique(rng.integers(1, 500, size))
        values = rng.integers(0, 520, 200)
        assert np.array_equal(in_sorted(values, ascending), np.isin(values, ascending))
    assert in_sorted(np.zeros(0, np.int64), np.array([3, 5])).shape == (0,)
