"""Approximate top-k over the item table with FAISS, by inner product (what the models score with).

The index holds the item embeddings of vocabulary indices 1..V-1 in order (PAD is left out), so a
FAISS id i is vocabulary index i + 1 and no id map is needed.

Which index: HNSW up to `HNSW_MAX_CATALOG` tracks (best recall per millisecond, no training, and
memory is small at that size); above it, where HNSW's graph and build time grow, a coarse quantizer
partitions the catalog (nlist = 4 sqrt(N), the usual rule) and a query scans the lists nearest to
it. On trained embeddings a quarter of the lists must be scanned for a 0.98 overlap, so what a list
scan costs decides the speed: `ivfpq` stores each track as 4-bit product-quantisation codes read
with SIMD lookup tables (fast-scan), about 2.5x faster than IVF-Flat's float vectors at the same
breadth, and re-scores its best REFINE_K_FACTOR x n exactly from a flat copy, so the order of what
it returns is exact (BENCHMARKS.md, "ANN that beats exact on `large`"). `ivf` (IVF-Flat) stays
available. The search breadth (`ef_search` or `nprobe`) is tuned at packaging time to the smallest
that makes the raw FAISS top-20 overlap the exact top-20 by at least `target_overlap` on held-out
queries, then stored with the index.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

HNSW_MAX_CATALOG = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
INDEX_TYPES = ("hnsw", "ivf", "ivfpq")
PQ_BITS = 4                     # fast-scan codes: 4 bits per sub-vector, scanned with SIMD lookup tables
PQ_DIMS_PER_CODE = 2            # sub-vectors of 2 dimensions: D/2 codes, 64 bytes a track at D 128
REFINE_K_FACTOR = 16            # ivfpq: the best 16x the results asked for by their 4-bit codes, re-scored exactly
# raw FAISS top-20 vs exact; the served answers, re-ranked with the neighbours' votes, overlap the exact
# ones by more (0.98 at 0.95 on `large`)
DEFAULT_TARGET_OVERLAP = 0.95
OVERLAP_K = 20


@dataclass
class AnnParams:
    index_type: str                 # 'hnsw' | 'ivf'
    catalog_size: int               # tracks in the index (vocabulary without PAD)
    dim: int
    metric: str = "inner_product"
    hnsw_m: int | None = None
    hnsw_ef_construction: int | None = None
    hnsw_ef_search: int | None = None
    ivf_nlist: int | None = None
    ivf_nprobe: int | None = None
    pq_m: int | None = None                   # ivfpq: sub-vectors per track (PQ_BITS bits each)
    refine_k_factor: float | None = None      # ivfpq: exact re-rank of this many times the results
    target_overlap: float | None = None
    overlap_at_20: float | None = None        # raw FAISS top-20 vs exact top-20, mean over queries
    overlap_queries: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AnnParams:
        return cls(**d)

    def log_params(self) -> dict[str, str]:
        """Flat `ann_*` keys for MLflow params and version tags."""
        return {f"ann_{k}": str(v) for k, v in self.to_dict().items() if v is not None}


def choose_index_type(catalog_size: int) -> str:
    return "hnsw" if catalog_size <= HNSW_MAX_CATALOG else "ivfpq"


def ivf_lists(n: int) -> int:
    """nlist = 4 sqrt(N), the usual rule, but no fewer than ~39 training points per list (FAISS's
    minimum): small catalogs get fewer lists."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(items: np.ndarray, index_type: str = "auto") -> tuple[faiss.Index, AnnParams]:
    """items [N, D] float32 = the item table without the PAD row."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    n, d = items.shape
    if n < 1:
        raise ValueError("cannot index an empty catalog")
    index_type = choose_index_type(n) if index_type == "auto" else index_type
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(items)
        params = AnnParams("hnsw", n, d, hnsw_m=HNSW_M, hnsw_ef_construction=HNSW_EF_CONSTRUCTION, hnsw_ef_search=64)
    elif index_type == "ivf":
        nlist = ivf_lists(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(items)
        index.add(items)
        params = AnnParams("ivf", n, d, ivf_nlist=nlist, ivf_nprobe=min(nlist, 8))
    elif index_type == "ivfpq":
        # the same lists, scanned as 4-bit codes (fast-scan) instead of float vectors, then the best
        # REFINE_K_FACTOR x n re-scored exactly from a flat copy the refine index keeps
        nlist, m = ivf_lists(n), pq_sub_vectors(d)
        index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x{PQ_BITS}fs,RFlat", faiss.METRIC_INNER_PRODUCT)
        index.train(items)
        index.add(items)
        params = AnnParams("ivfpq", n, d, ivf_nlist=nlist, ivf_nprobe=min(nlist, 8), pq_m=m,
                           refine_k_factor=REFINE_K_FACTOR)
    else:
        raise ValueError(f"unknown ANN index type {index_type!r}; expected auto, {', '.join(INDEX_TYPES)}")
    return index, params


def pq_sub_vectors(d: int) -> int:
    """Sub-vectors of PQ_DIMS_PER_CODE dimensions; D must divide evenly (1 dimension each if not)."""
    return d // PQ_DIMS_PER_CODE if d % PQ_DIMS_PER_CODE == 0 else d


def search_parameters(params: AnnParams, n_results: int):
    """Per-call search breadth (no shared index state is changed, so concurrent searches are safe)."""
    if params.index_type == "hnsw":
        # HNSW cannot return more results than its candidate list
        return faiss.SearchParametersHNSW(efSearch=max(int(params.hnsw_ef_search or 64), n_results))
    lists = faiss.SearchParametersIVF(nprobe=int(params.ivf_nprobe or 1))
    if params.index_type == "ivfpq":
        return faiss.IndexRefineSearchParameters(k_factor=float(params.refine_k_factor or REFINE_K_FACTOR),
                                                 base_index_params=lists)
    return lists


def search(index: faiss.Index, params: AnnParams, queries: np.ndarray, n_results: int) -> np.ndarray:
    """Vocabulary indices [B, n] of the approximate top n (0 where FAISS found fewer)."""
    n_results = max(1, min(int(n_results), params.catalog_size))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, ids = index.search(queries, n_results, params=search_parameters(params, n_results))
    return np.where(ids >= 0, ids + 1, 0).astype(np.int64)


def exact_top(items: np.ndarray, queries: np.ndarray, k: int, chunk_bytes: int = 256 * 2**20) -> np.ndarray:
    """Vocabulary indices [B, k] of each query's exact top k (unordered), a chunk of queries at a
    time: 1,000 queries against a million tracks would be a 4 GB score matrix at once."""
    items = np.asarray(items, np.float32)
    queries = np.asarray(queries, np.float32)
    k = min(k, len(items))
    rows = max(1, chunk_bytes // (4 * max(1, len(items))))
    tops = []
    for start in range(0, len(queries), rows):
        scores = queries[start : start + rows] @ items.T
        tops.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
    return np.concatenate(tops) + 1 if tops else np.zeros((0, k), np.int64)


def mean_overlap(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))


def tune(
    index: faiss.Index,
    params: AnnParams,
    items: np.ndarray,
    queries: np.ndarray,
    target_overlap: float = DEFAULT_TARGET_OVERLAP,
    k: int = OVERLAP_K,
) -> AnnParams:
    """The smallest ef_search / nprobe (within an eighth) whose top-k overlaps exact search's by
    `target_overlap`: doubled until it does, then bisected back between the last breadth that
    missed and the first that met it. Doubling alone can leave the breadth, and so the search's
    cost, up to twice what the target needs."""
    exact = exact_top(items, queries, k)
    name, limit = ("hnsw_ef_search", params.catalog_size) if params.index_type == "hnsw" else \
        ("ivf_nprobe", params.ivf_nlist)

    def overlap_at(breadth: int) -> float:
        setattr(params, name, breadth)
        return mean_overlap(search(index, params, queries, k), exact)

    breadth, missed = getattr(params, name), None
    overlap = overlap_at(breadth)
    while overlap < target_overlap and breadth < limit:
        missed, breadth = breadth, min(limit, breadth * 2)
        overlap = overlap_at(breadth)
    if overlap >= target_overlap and missed is not None:
        met, met_overlap = breadth, overlap
        while met - missed > max(1, missed // 8):
            middle = (missed + met) // 2
            middle_overlap = overlap_at(middle)
            if middle_overlap >= target_overlap:
                met, met_overlap = middle, middle_overlap
            else:
                missed = middle
        breadth, overlap = met, met_overlap
    setattr(params, name, breadth)
    params.target_overlap = target_overlap
    params.overlap_at_20 = overlap
    params.overlap_queries = len(queries)
    return params


def stored_vectors(index: faiss.Index) -> Callable[[np.ndarray], np.ndarray]:
    """FAISS ids -> the vectors the index stores for them [n, D] float32, read from the index
    itself (no second copy of the table): HNSW's flat storage in place, IVF's lists through a
    direct map (8 bytes a vector). What the ANN path re-ranks its candidates with."""
    flat_storage = {faiss.IndexHNSWFlat: "storage", faiss.IndexRefineFlat: "refine_index"}.get(type(index))
    if flat_storage:
        storage = faiss.downcast_index(getattr(index, flat_storage))
        table = faiss.rev_swig_ptr(storage.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        return lambda ids, owner=index: table[ids]      # `owner` keeps the memory `table` reads alive
    faiss.extract_index_ivf(index).make_direct_map()
    return index.reconstruct_batch


def save(index: faiss.Index, params: AnnParams, index_path: Path, params_path: Path) -> None:
    faiss.write_index(index, str(index_path))
    Path(params_path).write_text(json.dumps(params.to_dict(), indent=2, sort_keys=True))


def load(index_path: Path, params_path: Path) -> tuple[faiss.Index, AnnParams]:
    params = AnnParams.from_dict(json.loads(Path(params_path).read_text()))
    index = faiss.read_index(str(index_path))
    if index.ntotal != params.catalog_size or index.d != params.dim:
        raise ValueError(
            f"index holds {index.ntotal} vectors of dimension {index.d}; "
            f"expected {params.catalog_size} of dimension {params.dim}"
        )
    return index, params
