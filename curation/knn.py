"""Faiss nearest-neighbour search on L2-normalised vectors (inner product = cosine), CPU or GPU.

Index kinds: `exact` (IndexFlatIP), `ivf_flat` and `ivf_pq` (trained on a sample). Approximate
indexes only *propose* candidates: every returned similarity is recomputed exactly from the
vectors, so thresholds mean the same thing whatever the index, and an exact and an IVF-PQ run
keep the same images when the candidates cover the true neighbours.

Because candidates are re-scored, IVF-PQ codes only have to *rank* well enough to put the true
neighbours among the proposals, not to estimate similarities: on CPU they are 4-bit fast-scan
codes (IndexIVFPQFastScan, SIMD lookups, 16 bytes per vector at D=256), which scan several
times faster than 8-bit codes. faiss-gpu has no fast-scan kernels, so a GPU build uses 8-bit codes.

The device is chosen at run time: a GPU index when faiss-gpu is importable and a GPU is present
(and `device` allows it), else CPU. The same code path serves both.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import Field
from tqdm import tqdm

from foundation.config import Section
from foundation.files import atomic_path

log = logging.getLogger(__name__)


class IndexSpec(Section):
    """Which Faiss index proposes neighbours, and how hard it looks."""

    kind: Literal["exact", "ivf_flat", "ivf_pq"] = "exact"
    nlist: int = Field(0, ge=0, description="IVF cells; 0 = 2*sqrt(N), at most N/39 (Faiss's training minimum)")
    nprobe: int = Field(0, ge=0, description="IVF cells visited per query; 0 = nlist/16")
    pq_m: int = Field(0, ge=0, description="PQ sub-quantizers; 0 = D/8")
    train_size: int = Field(100_000, ge=1, description="vectors sampled to train IVF/PQ")
    candidates: int = Field(2, ge=1, description="approximate indexes propose k*candidates, re-ranked exactly")
    device: Literal["auto", "cpu", "gpu"] = "auto"


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(vectors: np.ndarray, spec: IndexSpec, seed: int = 0) -> faiss.Index:
    """A CPU index over `vectors` (N×D float32, unit norm, in memory or memory-mapped), trained on a
    seeded sample when it needs training; `on_device` moves it to a GPU for searching (CPU indexes
    are what serialise)."""
    n, dim = vectors.shape
    if spec.kind == "exact":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    else:
        nlist = spec.nlist or max(1, min(n // 39, int(2 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        if spec.kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = spec.pq_m or _largest_divisor_at_most(dim, max(1, dim // 8))
            if use_gpu(spec):
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(training_sample(vectors, spec.train_size, seed))
        index.nprobe = min(spec.nprobe or max(1, nlist // 16), nlist)
    for start in range(0, n, ADD_BATCH):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH]))
    return index


ADD_BATCH = 1 << 18
"""Rows added to an index at once: `vectors` may be a memory map of the whole pool, and an IVF
index keeps only codes, so the process never holds more than this many vectors."""


def training_sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most `size` rows of `vectors`, a seeded sample in row order, in memory: what IVF lists and
    k-means train on, so a memory-mapped pool is read only for its sample."""
    rows = np.random.default_rng(seed).choice(len(vectors), min(len(vectors), size), replace=False)
    return np.ascontiguousarray(vectors[np.sort(rows)])


KMEANS_POINTS_PER_CENTROID = 256
"""Training points per centroid: Faiss subsamples to this many itself, but only after its Python
wrapper has copied every point into memory."""


def spherical_kmeans(
    vectors: np.ndarray, k: int, iterations: int, seed: int, gpu: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded spherical k-means of `vectors` (in memory or memory-mapped): (centroids k×D, each row's
    cluster, each row's similarity to its centroid), rows assigned ADD_BATCH at a time.

    Similarities are each pair's own dot product, not the search's: BLAS sums' last bit depends on
    the thread count (a Ray job runs with OMP_NUM_THREADS=1), and callers order rows by them.
    """
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=iterations, seed=seed, spherical=True, gpu=gpu)
    kmeans.train(training_sample(vectors, KMEANS_POINTS_PER_CENTROID * k, seed))
    assignment = np.empty(len(vectors), np.int64)
    similarity = np.empty(len(vectors), np.float32)
    for rows, nearest, sims in nearest_centroids(vectors, kmeans):
        assignment[rows], similarity[rows] = nearest, sims
    return kmeans.centroids, assignment, similarity


def nearest_centroids(vectors: np.ndarray, kmeans: faiss.Kmeans) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(rows, each row's nearest centroid, its similarity) for ADD_BATCH rows of `vectors` at a time,
    searched in the trained `kmeans.index` (on GPU when it was trained there); a memory-mapped pool
    is read once and never held. Similarities are each pair's own dot product (see `spherical_kmeans`)."""
    for rows in row_blocks(len(vectors), "assign to centroids"):
        block = np.ascontiguousarray(vectors[rows])
        nearest = kmeans.index.search(block, 1)[1][:, 0]
        yield rows, nearest, np.einsum("nd,nd->n", block, kmeans.centroids[nearest])


def row_blocks(n: int, desc: str) -> Iterator[slice]:
    """Rows [0, n) as ADD_BATCH-row slices, with a progress bar when there are several: a pass over a
    billion-image pool is hours of work."""
    starts = range(0, n, ADD_BATCH)
    for start in tqdm(starts, desc=desc, unit="block", file=sys.stderr, disable=len(starts) < 2):
        yield slice(start, min(n, start + ADD_BATCH))


@dataclass(frozen=True)
class Members:
    """Each group's members (ascending) as slices of one stable sort of the labels (a k-means'
    clusters): a scan of the labels per group would cost groups × points, 1.2e14 at the paper's
    pool and 100K clusters."""

    order: np.ndarray
    counts: np.ndarray
    bounds: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, groups: int) -> Members:
        counts = np.bincount(labels, minlength=groups)
        return cls(np.argsort(labels, kind="stable"), counts, np.concatenate([[0], np.cumsum(counts)]))

    def __getitem__(self, group: int) -> np.ndarray:
        return self.order[self.bounds[group] : self.bounds[group + 1]]


def pair_similarity(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """vectors[a[i]] · vectors[b[i]] for every i (float32), PAIR_BATCH pairs at a time: gathering
    every pair's rows at once would copy 8·d bytes a pair out of a memory-mapped pool."""
    out = np.empty(len(a), np.float32)
    for start in range(0, len(a), PAIR_BATCH):
        block = slice(start, start + PAIR_BATCH)
        out[block] = np.einsum("nd,nd->n", vectors[a[block]], vectors[b[block]])
    return out


PAIR_BATCH = 1 << 16


def _largest_divisor_at_most(dim: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if dim % d == 0)


def use_gpu(spec: IndexSpec) -> bool:
    """Whether Faiss work for `spec` (search, k-means) runs on GPU: when present and not forbidden."""
    if spec.device == "gpu" and not gpu_available():
        raise RuntimeError("index device 'gpu' requested but faiss-gpu or a GPU is missing; install the gpu extra")
    return spec.device != "cpu" and gpu_available()


def on_device(index: faiss.Index, spec: IndexSpec) -> faiss.Index:
    """The index on a GPU when `use_gpu(spec)`, else as is."""
    if use_gpu(spec):
        log.info("faiss: moving the %s index to GPU", spec.kind)
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def is_approximate(spec: IndexSpec) -> bool:
    return spec.kind != "exact"


def search(
    index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` neighbours of each query: (similarities Q×k, ids Q×k, -1 where fewer exist), exact scores.

    `vectors` are the indexed vectors, used to re-score candidates from approximate indexes.
    """
    k = min(k, index.ntotal)
    if not is_approximate(spec):
        return index.search(queries, k)
    parts = [
        _search_rescored(index, spec, vectors, queries[i : i + RESCORE_BATCH], k)
        for i in range(0, len(queries), RESCORE_BATCH)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


RESCORE_BATCH = 16_384  # queries searched and re-scored at once: bounds the Q×k candidate arrays


def _search_rescored(
    index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    _, candidates = index.search(queries, min(index.ntotal, k * spec.candidates))
    scores = inner_products_by_id(queries, vectors, candidates)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)


def inner_products_by_id(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """queries[q] · vectors[ids[q, j]] for every (q, j), -inf where ids is -1.

    Faiss's threaded gather-and-dot reads each candidate row in place; numpy's `vectors[ids]` would
    first copy a Q×k×D array, which made re-scoring slower than the IVF-PQ search it follows.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    base = vectors if vectors.flags.c_contiguous and vectors.dtype == np.float32 else np.ascontiguousarray(vectors)
    scores = np.empty(ids.shape, np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(scores),
        faiss.swig_ptr(queries),
        faiss.swig_ptr(base),
        faiss.swig_ptr(ids),
        queries.shape[1],
        len(queries),
        ids.shape[1],
    )
    scores[ids < 0] = -np.inf
    return scores


def neighbours_above(
    index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, queries: np.ndarray, k: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, neighbour id, similarity) for every top-`k` neighbour with similarity >= threshold."""
    sims, ids = search(index, spec, vectors, queries, k)
    rows, cols = np.nonzero((sims >= threshold) & (ids >= 0))
    return rows, ids[rows, cols], sims[rows, cols]


def saved_index(vectors_path: Path, spec: IndexSpec, seed: int = 0) -> Path:
    """Build the index over the vectors saved at `vectors_path` (.npy) once, beside them; its path.

    Search tasks open both with `open_saved`; a killed stage that already saved the index does not
    build it again.
    """
    index_path = vectors_path.with_name("index.faiss")
    if not index_path.exists():
        with atomic_path(index_path) as tmp:
            faiss.write_index(build_index(np.load(vectors_path, mmap_mode="r"), spec, seed), str(tmp))
    return index_path


MAP_FLAG = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
"""How search tasks open a saved index: memory-mapped, so the tasks on a node share one copy in the
page cache. Faiss >= 1.11 (IO_FLAG_MMAP_IFC) maps flat and IVF-flat indexes; older ones (IO_FLAG_MMAP)
map IVF lists only. Neither maps fast-scan IVF-PQ codes: each task copies those (d/16 + 8 bytes a
vector, which `--plan` states)."""


def open_saved(index_path: str | Path, vectors_path: str | Path, spec: IndexSpec) -> tuple[faiss.Index, np.ndarray]:
    return on_device(faiss.read_index(str(index_path), MAP_FLAG), spec), np.load(vectors_path, mmap_mode="r")
