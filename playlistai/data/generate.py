"""Synthetic Last.fm-like listening logs whose generator knows its own truth.

The generative process
----------------------
Catalog. Genres have an *energy* in [0, 1] (ambient ... dance). Each genre has artists with
Zipf-like popularity; each artist has a few albums, each album an ordered track list whose first
tracks (the singles) are played more. A track's popularity is artist x album x position weight.

Users. Each user has a sparse taste over genres (Dirichlet with a small concentration) and an
activity level. Sessions start at hours drawn from a diurnal profile (commute, evening peak) over
a 13-week window; consecutive sessions of one user are at least 75 minutes apart, and plays within
a session are never more than 25 minutes apart, so sessionizing at 45 minutes recovers them.

Context. The hour and day of week map to one of ten slots (five times of day, weekday or weekend,
where Friday evening counts as weekend). Each slot prefers genres near a target energy: calm in the
morning, dance late on Friday and Saturday nights.

A session. Its first track comes from a genre drawn from the user's taste reweighted by the slot,
by popularity within that genre; the first track's genre is the *session genre*. Every next track
is drawn from a mixture whose weights depend only on what has been played so far and on the
context of the moment it plays:

    album    the next track on the album of the last track (weight rises when the listener is
             already playing an album in order: "album mode")
    artist   another track by the last track's artist, by popularity
    genre    a track of the session genre, by popularity
    context  a track of a genre drawn from the slot's preference, by popularity
    hit      a globally popular track
    repeat   a track already played in this session (people re-listen)

When the last track ends its album, the album weight moves to the artist. Plays are full length
or skipped after 10-40 s (skips shorten the gap, as in real logs).

The truth. Because the mixture depends only on the session prefix and the context,
`SyntheticWorld.next_track_distribution` gives the exact probability of every track for any
event, and `oracle_scores` does so in batches over a vocabulary: the Bayes-optimal ranking that
no model can beat on the next-track protocol. A model that sees the same prefix and context can in
principle reach it; the user's taste only enters through the first track, which is observed.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from playlistai.data.parquet_io import whole_groups
from playlistai.data.vocab import Vocabulary

SIZES = ("tiny", "default", "large", "xlarge")

GENRE_NAMES = [
    "ambient", "classical", "jazz", "folk", "acoustic", "soul", "blues", "indie", "pop", "rock",
    "rnb", "hiphop", "reggaeton", "house", "techno", "drum-and-bass",
]


@dataclass(frozen=True)
class WorldConfig:
    n_genres: int
    artists_per_genre: int
    albums_per_artist: tuple[int, int]   # inclusive range
    tracks_per_album: tuple[int, int]
    n_users: int
    sessions_per_user: float             # mean; per-user activity is log-normal around it
    session_len_mean: float
    days: int = 91
    start: str = "2024-01-01"
    # mixture weights of the next-track process (normalised at use)
    w_album: float = 0.36
    w_album_mode: float = 0.62           # album weight once the listener plays an album in order
    w_artist: float = 0.14
    w_genre: float = 0.18
    w_context: float = 0.14
    w_hit: float = 0.08
    w_repeat: float = 0.10
    artist_zipf: float = 1.2
    taste_concentration: float = 0.25
    context_sharpness: float = 0.12       # std of the slot's energy preference
    hit_share: float = 0.01               # share of the catalog that forms the "hits" pool
    skip_prob: float = 0.15


PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(
        n_genres=6, artists_per_genre=8, albums_per_artist=(1, 2), tracks_per_album=(5, 9),
        n_users=120, sessions_per_user=8, session_len_mean=9, days=35,
    ),
    "default": WorldConfig(
        n_genres=16, artists_per_genre=30, albums_per_artist=(1, 3), tracks_per_album=(6, 12),
        n_users=3000, sessions_per_user=9, session_len_mean=11,
    ),
    "large": WorldConfig(
        n_genres=32, artists_per_genre=440, albums_per_artist=(1, 3), tracks_per_album=(6, 12),
        n_users=50000, sessions_per_user=8, session_len_mean=10, artist_zipf=0.8,
    ),
    # `large` scaled up for scale benchmarks: ~1.04M tracks (57,600 artists of ~18 tracks) and
    # ~54M plays (~91 plays per user); the data stage writes it in chunks (`generate_chunks`)
    "xlarge": WorldConfig(
        n_genres=32, artists_per_genre=1800, albums_per_artist=(1, 3), tracks_per_album=(6, 12),
        n_users=600_000, sessions_per_user=8, session_len_mean=10, artist_zipf=0.8,
    ),
}

N_SLOTS = 10
_SLOT_ENERGY = [0.45, 0.1, 0.35, 0.55, 0.7]  # night, morning, day, evening, late; weekend adds 0.25


def context_slot(hour: int, dow: int) -> int:
    """Ten slots: five times of day x (weekday, weekend). Friday from 17:00 counts as weekend."""
    if hour < 6:
        tod = 0
    elif hour < 11:
        tod = 1
    elif hour < 17:
        tod = 2
    elif hour < 22:
        tod = 3
    else:
        tod = 4
    weekend = dow >= 5 or (dow == 4 and hour >= 17)
    return tod + 5 * int(weekend)


def context_slots(hours: np.ndarray, dows: np.ndarray) -> np.ndarray:
    return np.fromiter((context_slot(int(h), int(d)) for h, d in zip(hours, dows, strict=True)), np.int64, len(hours))


@dataclass
class SyntheticWorld:
    config: WorldConfig
    seed: int
    track_genre: np.ndarray        # [T] int
    track_artist: np.ndarray       # [T] int
    track_album: np.ndarray        # [T] int
    album_next: np.ndarray         # [T] next track on the same album, -1 at the album's end
    track_pop: np.ndarray          # [T] popularity weight
    track_duration: np.ndarray     # [T] seconds
    genre_energy: np.ndarray       # [G]
    slot_genre: np.ndarray         # [N_SLOTS, G] P(genre | slot)
    _cache: dict = field(default_factory=dict, repr=False)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, config: WorldConfig, seed: int) -> SyntheticWorld:
        rng = np.random.default_rng(seed)
        G = config.n_genres
        energy = np.linspace(0.0, 1.0, G)
        genre, artist, album, pos_w, album_next = [], [], [], [], []
        artist_id = album_id = 0
        for g in range(G):
            ranks = rng.permutation(config.artists_per_genre) + 1
            for r in ranks:
                a_pop = r ** -config.artist_zipf
                for _ in range(rng.integers(config.albums_per_artist[0], config.albums_per_artist[1] + 1)):
                    n = int(rng.integers(config.tracks_per_album[0], config.tracks_per_album[1] + 1))
                    album_pop = a_pop * rng.lognormal(0, 0.5)
                    first = len(genre)
                    for i in range(n):
                        genre.append(g)
                        artist.append(artist_id)
                        album.append(album_id)
                        # singles open the album and are played more; a few deep cuts too
                        pos_w.append(album_pop * (1.0 / (1 + 0.35 * i)) * rng.lognormal(0, 0.35))
                        album_next.append(first + i + 1 if i + 1 < n else -1)
                    album_id += 1
                artist_id += 1
        slot_energy = np.array([min(1.0, e + 0.25 * w) for w in (0, 1) for e in _SLOT_ENERGY])
        logits = -((energy[None, :] - slot_energy[:, None]) ** 2) / (2 * config.context_sharpness**2)
        slot_genre = np.exp(logits - logits.max(axis=1, keepdims=True))
        slot_genre /= slot_genre.sum(axis=1, keepdims=True)
        return cls(
            config=config,
            seed=seed,
            track_genre=np.asarray(genre, np.int64),
            track_artist=np.asarray(artist, np.int64),
            track_album=np.asarray(album, np.int64),
            album_next=np.asarray(album_next, np.int64),
            track_pop=np.asarray(pos_w, np.float64),
            track_duration=rng.integers(150, 361, size=len(genre)).astype(np.int64),
            genre_energy=energy,
            slot_genre=slot_genre,
        )

    @property
    def n_tracks(self) -> int:
        return len(self.track_genre)

    def track_ids(self) -> np.ndarray:
        return np.array([f"t{i:06d}" for i in range(self.n_tracks)], dtype=object)

    def artist_ids(self) -> np.ndarray:
        names = np.array([f"a{i:05d}" for i in range(int(self.track_artist.max()) + 1)], dtype=object)
        return names[self.track_artist]

    def genre_names(self) -> np.ndarray:
        names = [GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"genre{g:02d}" for g in range(self.config.n_genres)]
        return np.array([names[g] for g in self.track_genre], dtype=object)

    @staticmethod
    def track_index(track_id: str) -> int:
        return int(track_id[1:])

    # -- the mixture, in closed form ------------------------------------------------------------

    def _tables(self) -> dict:
        """Per-genre, per-artist and hit distributions, built once, in memory linear in the catalog.

        The genre component would be a dense [genre x track] table (about 260 MB at xlarge's 1M tracks);
        it is kept as each track's share of its genre's popularity instead, and `_genre_row` makes
        the one row a distribution needs.
        """
        if self._cache:
            return self._cache
        T, G = self.n_tracks, self.config.n_genres
        genre_members = [np.flatnonzero(self.track_genre == g) for g in range(G)]
        genre_share = np.zeros(T)
        for m in genre_members:
            genre_share[m] = self.track_pop[m] / self.track_pop[m].sum()
        order = np.argsort(self.track_artist, kind="stable")
        bounds = np.r_[0, np.flatnonzero(np.diff(self.track_artist[order])) + 1, T]
        artist_tracks = [order[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
        artist_probs = [self.track_pop[t] / self.track_pop[t].sum() for t in artist_tracks]
        n_hits = max(10, int(self.config.hit_share * T))
        hits = np.argsort(-self.track_pop, kind="stable")[:n_hits]
        hit_dist = np.zeros(T)
        hit_dist[hits] = self.track_pop[hits] / self.track_pop[hits].sum()
        self._cache.update(
            genre_members=genre_members, genre_share=genre_share, artist_tracks=artist_tracks,
            artist_probs=artist_probs, hit_dist=hit_dist,
        )
        return self._cache

    def _genre_row(self, genre: int) -> np.ndarray:
        """P(track | genre) over the catalog: popularity within the genre."""
        tab = self._tables()
        members = tab["genre_members"][genre]
        row = np.zeros(self.n_tracks)
        row[members] = tab["genre_share"][members]
        return row

    def _context_row(self, slot: int) -> np.ndarray:
        """P(track | slot) over the catalog: P(genre | slot) x popularity within the genre.

        The oracle asks for one per case, so the N_SLOTS rows are kept once made (80 MB at 1M
        tracks); sampling never asks, so generating a log never makes them."""
        if "context_dist" not in self._cache:
            self._cache["context_dist"] = self.slot_genre[:, self.track_genre] * self._tables()["genre_share"]
        return self._cache["context_dist"][slot]

    def mixture_weights(self, prefix: list[int]) -> dict[str, float]:
        """Component weights for the track after `prefix` (world track indices, non-empty)."""
        c = self.config
        last = prefix[-1]
        album_mode = len(prefix) >= 2 and self.album_next[prefix[-2]] == last
        w = {
            "album": c.w_album_mode if album_mode else c.w_album,
            "artist": c.w_artist, "genre": c.w_genre, "context": c.w_context,
            "hit": c.w_hit, "repeat": c.w_repeat,
        }
        if album_mode:  # the album's pull takes its share from the others, proportionally
            rest = 1.0 - w["album"]
            others = sum(v for k, v in w.items() if k != "album")
            for k in w:
                if k != "album":
                    w[k] *= rest / others
        if self.album_next[last] < 0:
            w["artist"] += w.pop("album")
            w["album"] = 0.0
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def next_track_distribution(self, prefix: list[int], hour: int, dow: int) -> np.ndarray:
        """Exact P(next track | prefix, context) over the whole world catalog."""
        if not prefix:
            raise ValueError("the next-track distribution is defined for a non-empty prefix")
        tab = self._tables()
        w = self.mixture_weights(prefix)
        last, first = prefix[-1], prefix[0]
        p = w["genre"] * self._genre_row(self.track_genre[first])
        p = p + w["context"] * self._context_row(context_slot(hour, dow))
        p = p + w["hit"] * tab["hit_dist"]
        a = self.track_artist[last]
        p[tab["artist_tracks"][a]] += w["artist"] * tab["artist_probs"][a]
        if w["album"] > 0:
            p[self.album_next[last]] += w["album"]
        np.add.at(p, np.asarray(prefix), w["repeat"] / len(prefix))
        return p

    def oracle_scores(self, prefixes: list[list[str]], hours, dows, vocab: Vocabulary) -> np.ndarray:
        """True next-track probabilities restricted to a vocabulary: [N, vocab.size], PAD column 0.

        Prefixes are raw track ids as they were played (unknown tracks included: the truth
        depends on what was played, not on what the vocabulary knows).
        """
        world_of_vocab = np.array([self.track_index(t) for t in vocab.track_ids], dtype=np.int64)
        out = np.zeros((len(prefixes), vocab.size), dtype=np.float32)
        for i, prefix in enumerate(prefixes):
            idx = [self.track_index(t) for t in prefix]
            out[i, 1:] = self.next_track_distribution(idx, int(hours[i]), int(dows[i]))[world_of_vocab]
        return out

    # -- sampling ------------------------------------------------------------------------------

    def generate(self) -> pd.DataFrame:
        """Sample the listening log of every user; returns the events contract, sorted by user, ts."""
        return pd.concat(list(self.generate_chunks()), ignore_index=True)

    def generate_chunks(self, chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
        """The log of `generate` in consecutive chunks of whole users, each closed at the first user
        that brings it to `chunk_rows` plays (None: one chunk). The random draws are the same, in the
        same order, whatever the chunk size: chunks only decide when rows are handed out, so a log
        larger than memory can be written as it is drawn."""
        c = self.config
        tab = self._tables()
        rnd = random.Random(self.seed + 1)
        np_rng = np.random.default_rng(self.seed + 1)
        G = c.n_genres
        cum = lambda p: np.cumsum(p / p.sum()).tolist()  # noqa: E731
        genre_members = tab["genre_members"]
        genre_cum = [cum(self.track_pop[m]) for m in genre_members]
        artist_cum = [cum(p) for p in tab["artist_probs"]]
        hit_members = np.flatnonzero(tab["hit_dist"] > 0)
        hit_cum = cum(tab["hit_dist"][hit_members])
        slot_cum = [cum(self.slot_genre[s]) for s in range(N_SLOTS)]
        # diurnal profile of session starts: night trough, commute bump, evening peak
        hour_w = np.array([2, 1, 1, 1, 1, 2, 4, 7, 9, 7, 5, 5, 6, 5, 5, 6, 7, 8, 9, 10, 10, 9, 7, 4], float)
        hour_cum = cum(hour_w)
        start = pd.Timestamp(c.start, tz="UTC").value // 10**9
        comps = ["album", "artist", "genre", "context", "hit", "repeat"]

        def draw(cumulative, members=None) -> int:
            i = min(bisect.bisect_right(cumulative, rnd.random()), len(cumulative) - 1)
            return int(members[i]) if members is not None else i

        def draw_genre_track(g: int) -> int:
            return draw(genre_cum[g], genre_members[g])

        # id strings of the catalog, made once and shared by every chunk's rows
        track_ids, artist_ids, genre_names = self.track_ids(), self.artist_ids(), self.genre_names()

        def events_frame(users: list[int], tracks: list[int], times: list[int]) -> pd.DataFrame:
            tracks_arr = np.asarray(tracks, np.int64)
            frame = pd.DataFrame(
                {
                    "user_id": pd.Series([f"u{u:06d}" for u in users], dtype="object"),
                    "track_id": track_ids[tracks_arr],
                    "ts": pd.to_datetime(np.asarray(times, np.int64), unit="s", utc=True),
                    "artist_id": artist_ids[tracks_arr],
                    "genre": genre_names[tracks_arr],
                }
            )
            for col in ("user_id", "track_id", "artist_id", "genre"):
                frame[col] = frame[col].astype("string")
            return frame

        users, tracks, times = [], [], []
        for u in range(c.n_users):
            taste = np_rng.dirichlet(np.full(G, c.taste_concentration))
            n_sessions = max(1, int(np_rng.poisson(c.sessions_per_user * np_rng.lognormal(0, 0.5))))
            days = np.sort(np_rng.integers(0, c.days, size=n_sessions))
            next_free = 0
            for d in days:
                hour = draw(hour_cum)
                t = start + int(d) * 86400 + hour * 3600 + rnd.randrange(3600)
                t = max(t, next_free)
                length = 2 + int(np_rng.geometric(1.0 / max(1.0, c.session_len_mean - 1)) - 1)
                length = min(length, 200)
                ts = pd.Timestamp(t, unit="s")
                slot = context_slot(ts.hour, ts.dayofweek)
                p_genre = taste * self.slot_genre[slot] ** 0.7
                g = draw(cum(p_genre))
                prefix = [draw_genre_track(g)]
                stamps = [t]
                for _ in range(length - 1):
                    skipped = rnd.random() < c.skip_prob
                    t += rnd.randint(10, 40) if skipped else int(self.track_duration[prefix[-1]]) + rnd.randint(0, 20)
                    if rnd.random() < 0.02:  # a pause, always shorter than the session gap
                        t += rnd.randint(60, 25 * 60)
                    ts = pd.Timestamp(t, unit="s")
                    w = self.mixture_weights(prefix)
                    comp = comps[draw(cum(np.array([w[k] for k in comps])))]
                    last = prefix[-1]
                    if comp == "album":
                        nxt = int(self.album_next[last])
                    elif comp == "artist":
                        a = self.track_artist[last]
                        nxt = draw(artist_cum[a], tab["artist_tracks"][a])
                    elif comp == "genre":
                        nxt = draw_genre_track(self.track_genre[prefix[0]])
                    elif comp == "context":
                        nxt = draw_genre_track(draw(slot_cum[context_slot(ts.hour, ts.dayofweek)]))
                    elif comp == "hit":
                        nxt = draw(hit_cum, hit_members)
                    else:
                        nxt = prefix[rnd.randrange(len(prefix))]
                    prefix.append(nxt)
                    stamps.append(t)
                users.extend([u] * len(prefix))
                tracks.extend(prefix)
                times.extend(stamps)
                next_free = t + 75 * 60 + rnd.randrange(4 * 3600)
            if chunk_rows is not None and len(tracks) >= chunk_rows:
                yield events_frame(users, tracks, times)
                users, tracks, times = [], [], []
        if tracks or chunk_rows is None:
            yield events_frame(users, tracks, times)

    # -- persistence ---------------------------------------------------------------------------

    _ARRAYS = ("track_genre", "track_artist", "track_album", "album_next", "track_pop",
               "track_duration", "genre_energy", "slot_genre")

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "world.npz", **{k: getattr(self, k) for k in self._ARRAYS})
        cfg = asdict(self.config)
        (directory / "world.json").write_text(json.dumps({"seed": self.seed, "config": cfg}, indent=2))

    @classmethod
    def load(cls, directory: Path) -> SyntheticWorld:
        directory = Path(directory)
        for name in ("world.npz", "world.json"):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name} not found: the oracle needs synthetic data")
        meta = json.loads((directory / "world.json").read_text())
        cfg = meta["config"]
        for key in ("albums_per_artist", "tracks_per_album"):
            cfg[key] = tuple(cfg[key])
        arrays = np.load(directory / "world.npz")
        return cls(config=WorldConfig(**cfg), seed=meta["seed"], **{k: arrays[k] for k in cls._ARRAYS})


def make_world(size: str, seed: int) -> SyntheticWorld:
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    return SyntheticWorld.create(PRESETS[size], seed)


SESSION_GAP_S = 45 * 60          # the ceilings cut sessions as preprocessing does by default
CEILING_BATCH_ROWS = 1 << 20     # plays read at a time when the ceilings pass over the log


def estimate_ceilings(
    world: SyntheticWorld, events: pd.DataFrame | str | Path, min_freq: int = 5, eval_frac: float = 0.1,
    max_cases: int = 20000, seed: int = 0, batch_rows: int = CEILING_BATCH_ROWS,
) -> dict[str, float]:
    """Oracle and MostPop on the latest sessions, as the data stage reports them.

    Sessions are the generator's (a user's plays split at 45 minutes, as preprocessing will);
    the catalog is the tracks played `min_freq` times before the evaluation period; tracks of the
    input are excluded, as the default evaluation does. The evaluation stage computes the exact
    figures on the real test split; these are the data's ceiling and floor at a glance.

    `events` is the world's log: a frame, or the Parquet file the data stage writes (sorted by
    user, then time). It is read `batch_rows` plays at a time, in four passes (when the
    evaluation period starts, the catalog, how many cases there are, the sampled cases), so
    memory holds a batch and per-track and per-second counts, never the log; the figures do not
    depend on `batch_rows`.
    """
    def plays() -> Iterator[_Plays]:
        return _plays_in_batches(events, batch_rows)

    period = _EvalPeriod.of(world, plays(), eval_frac)
    train_counts = np.zeros(world.n_tracks, np.int64)
    for batch, in_eval in period.mark(plays()):
        train_counts += np.bincount(batch.track[~in_eval], minlength=world.n_tracks)
    catalog = np.flatnonzero(train_counts >= min_freq)
    catalog = catalog[np.argsort(-train_counts[catalog], kind="stable")]
    vocab = Vocabulary.from_frame(pd.DataFrame({"track_id": world.track_ids()[catalog],
                                                "count": train_counts[catalog]}))
    in_vocab = np.zeros(world.n_tracks, bool)
    in_vocab[catalog] = True
    pop_scores = np.log1p(vocab.popularity().astype(np.float64))
    pop_scores[0] = -np.inf

    # a case: a play of an evaluation session after its first, whose track the catalog knows
    def cases(batch: _Plays, in_eval: np.ndarray) -> np.ndarray:
        return np.flatnonzero(in_eval & ~batch.opens & in_vocab[batch.track])

    n_cases = sum(len(cases(batch, in_eval)) for batch, in_eval in period.mark(plays()))
    keep = np.arange(n_cases)
    # the oracle is a dense row per case: bound the work, and a batch's scores to 1e7 (80 MB), by catalog size
    max_cases = min(max_cases, max(500, int(4e8 // max(len(vocab), 1))))
    batch_size = max(1, min(2048, int(1e7 // max(len(vocab), 1))))
    if n_cases > max_cases:
        keep = np.sort(np.random.default_rng(seed).choice(n_cases, size=max_cases, replace=False))
    prefixes, targets, seconds = [], [], []
    seen = 0
    for batch, in_eval in period.mark(plays()):
        rows = cases(batch, in_eval)
        picked = rows[keep[(keep >= seen) & (keep < seen + len(rows))] - seen]
        seen += len(rows)
        if not len(picked):
            continue
        session_first = np.flatnonzero(batch.opens)[batch.session[picked]]
        for first, row in zip(session_first.tolist(), picked.tolist(), strict=True):
            prefixes.append(batch.track_ids.slice(first, row - first).to_pylist())
            targets.append(vocab.index_of(batch.track_ids[row].as_py()))
        seconds.append(batch.seconds[picked])
    seconds = np.concatenate(seconds) if seconds else np.zeros(0, np.int64)
    hours, dows = (seconds // 3600) % 24, (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday

    results = {"oracle": [], "mostpop": []}
    for lo in range(0, len(prefixes), batch_size):
        pre = prefixes[lo : lo + batch_size]
        tgt = np.asarray(targets[lo : lo + batch_size])
        oracle = world.oracle_scores(pre, hours[lo : lo + batch_size], dows[lo : lo + batch_size], vocab)
        oracle = oracle.astype(np.float64)
        oracle[:, 0] = -np.inf
        pop = np.broadcast_to(pop_scores, oracle.shape).copy()
        for scores, name in ((oracle, "oracle"), (pop, "mostpop")):
            for i, p in enumerate(pre):
                seen_tracks = vocab.encode(p)
                scores[i, seen_tracks[seen_tracks > 0]] = -np.inf
            results[name].append(_ranks(scores, tgt))
    out: dict[str, float] = {"ceiling_cases": float(len(prefixes)), "ceiling_catalog_size": float(len(vocab))}
    for name, parts in results.items():
        ranks = np.concatenate(parts) if parts else np.zeros(0)
        out[f"{name}_recall_at_20"] = float(np.mean(ranks <= 20)) if len(ranks) else 0.0
        gains = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)
        out[f"{name}_ndcg_at_10"] = float(np.mean(gains)) if len(ranks) else 0.0
    return out


@dataclass
class _Plays:
    """A batch of whole users' plays in (user, time) order, as the ceilings read them."""

    track: np.ndarray        # world track index
    track_ids: pa.ChunkedArray
    seconds: np.ndarray      # epoch seconds (the generator's times are whole seconds)
    opens: np.ndarray        # the play opens a session
    session: np.ndarray      # the batch's session number of the play, from 0

    @classmethod
    def of(cls, table: pa.Table) -> _Plays:
        users, track_ids = table.column("user_id"), table.column("track_id")
        # a cast that would drop fractions of a second fails: the sessions' starts are counted per second
        seconds = pc.cast(table.column("ts"), pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
        opens = np.ones(len(seconds), bool)
        if len(seconds) > 1:
            new_user = pc.not_equal(users.slice(1), users.slice(0, len(seconds) - 1)).to_numpy()
            opens[1:] = new_user | (np.diff(seconds) > SESSION_GAP_S)
        track = pc.cast(pc.utf8_slice_codeunits(track_ids, 1), pa.int64()).to_numpy()  # "t000042" -> 42
        return cls(track, track_ids, seconds, opens, np.cumsum(opens) - 1)

    @property
    def starts(self) -> np.ndarray:
        """The start of each session of the batch, in epoch seconds."""
        return self.seconds[self.opens]


def _plays_in_batches(events: pd.DataFrame | str | Path, batch_rows: int) -> Iterator[_Plays]:
    columns = ["user_id", "track_id", "ts"]
    if isinstance(events, pd.DataFrame):
        ordered = events.sort_values(["user_id", "ts"], kind="mergesort")[columns]
        batches = pa.Table.from_pandas(ordered, preserve_index=False).to_batches(max_chunksize=batch_rows)
    else:
        batches = pq.ParquetFile(events).iter_batches(batch_size=batch_rows, columns=columns)
    for table in whole_groups(batches, "user_id"):
        yield _Plays.of(table)


@dataclass
class _EvalPeriod:
    """The latest `eval_frac` of the sessions by start time, as a stable sort of the starts in
    file order would take them: every session that starts after `second`, and of those that start
    in it (`tied`), the last `tied_in_eval`. Found from per-second counts of the starts over the
    world's time window, so its memory is the window's, not the log's."""

    second: int
    tied: int
    tied_in_eval: int

    @classmethod
    def of(cls, world: SyntheticWorld, batches: Iterable[_Plays], eval_frac: float) -> _EvalPeriod:
        origin = pd.Timestamp(world.config.start, tz="UTC").value // 10**9
        counts = np.zeros((world.config.days + 1) * 86400, np.int32)
        for batch in batches:
            offsets = batch.starts - origin
            if len(offsets) and offsets.min() < 0:
                raise ValueError("the events start before the world's window: they are not this world's")
            if len(offsets) and offsets.max() >= len(counts):
                counts = np.concatenate([counts, np.zeros(offsets.max() + 1 - len(counts) + 86400, np.int32)])
            values, n = np.unique(offsets, return_counts=True)
            counts[values] += n.astype(np.int32)
        n_eval = max(1, int(int(counts.sum()) * eval_frac))
        from_end = np.cumsum(counts[::-1], dtype=np.int64)
        i = int(np.searchsorted(from_end, n_eval))
        later = int(from_end[i - 1]) if i else 0
        return cls(second=origin + len(counts) - 1 - i, tied=int(counts[-1 - i]), tied_in_eval=n_eval - later)

    def mark(self, batches: Iterable[_Plays]) -> Iterator[tuple[_Plays, np.ndarray]]:
        """Each batch with, per play, whether its session is in the evaluation period."""
        tied_seen = 0
        for batch in batches:
            starts = batch.starts
            tied = starts == self.second
            rank_in_tie = tied_seen + np.cumsum(tied) - 1
            tied_seen += int(tied.sum())
            session_in_eval = (starts > self.second) | (tied & (rank_in_tie >= self.tied - self.tied_in_eval))
            yield batch, session_in_eval[batch.session]


def _ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target; ties count against the target; an excluded target ranks last."""
    t = scores[np.arange(len(targets)), targets]
    ahead = (scores > t[:, None]).sum(axis=1) + (scores == t[:, None]).sum(axis=1) - 1
    return np.where(np.isfinite(t), ahead + 1, math.inf)
