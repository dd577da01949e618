"""Faiss search: exact scores from approximate indexes, and IVF-PQ edge recall against exact search."""

from __future__ import annotations

import subprocess
import sys

import faiss
import numpy as np
import pytest

from curation import knn
from curation.knn import IndexSpec, build_index, neighbours_above, search
from curation.synth.vectors import planted_vectors


def edges(spec: IndexSpec, vectors: np.ndarray, queries: int, k: int = 65, threshold: float = 0.6) -> set:
    index = build_index(vectors, spec)
    rows, ids, _ = neighbours_above(index, spec, vectors, vectors[:queries], k, threshold)
    return {(int(r), int(i)) for r, i in zip(rows, ids, strict=True) if r != i}


def test_approximate_indexes_return_exact_similarities():
    vectors = planted_vectors(5000, 64, seed=1)
    spec = IndexSpec(kind="ivf_pq", nlist=32, nprobe=8)
    sims, ids = search(build_index(vectors, spec), spec, vectors, vectors[:50], 10)
    assert np.allclose(sims, np.einsum("qd,qkd->qk", vectors[:50], vectors[ids]), atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-6), "neighbours come in decreasing similarity"


def test_ivf_flat_and_pq_find_the_planted_edges_on_a_small_set():
    vectors = planted_vectors(20_000, 64, seed=2)
    exact = edges(IndexSpec(kind="exact"), vectors, 5000)
    for kind in ("ivf_flat", "ivf_pq"):
        found = edges(IndexSpec(kind=kind, nprobe=64), vectors, 5000)
        assert len(exact & found) / len(exact) >= 0.98, kind


@pytest.mark.slow
def test_ivf_pq_edge_recall_on_200k_vectors():
    vectors = planted_vectors(200_000, 256, seed=0)
    exact = edges(IndexSpec(kind="exact"), vectors, 20_000)
    found = edges(IndexSpec(kind="ivf_pq", nprobe=128), vectors, 20_000)
    assert len(exact) > 1000 and len(exact & found) / len(exact) >= 0.98


@pytest.mark.parametrize("kind", ["exact", "ivf_pq"])
def test_an_index_over_a_memory_map_added_in_batches_finds_what_one_added_at_once_finds(kind, tmp_path, monkeypatch):
    """The vector stages build over a memory-mapped pool, ADD_BATCH rows at a time: the same index."""
    vectors = planted_vectors(3000, 32, seed=3)
    spec = IndexSpec(kind=kind, nlist=16, nprobe=4, device="cpu")
    whole = search(build_index(vectors, spec), spec, vectors, vectors[:200], 8)
    np.save(tmp_path / "vectors.npy", vectors)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    monkeypatch.setattr(knn, "ADD_BATCH", 700)
    batched = search(build_index(mapped, spec), spec, mapped, vectors[:200], 8)
    assert np.array_equal(whole[1], batched[1]) and np.array_equal(whole[0], batched[0])


def test_kmeans_assigns_in_batches_as_it_would_at_once_and_scores_each_pair(monkeypatch):
    vectors = planted_vectors(4000, 32, seed=4)
    centroids, assignment, similarity = knn.spherical_kmeans(vectors, 20, 10, seed=0)
    monkeypatch.setattr(knn, "ADD_BATCH", 333)
    again = knn.spherical_kmeans(vectors, 20, 10, seed=0)
    assert np.array_equal(centroids, again[0]) and np.array_equal(assignment, again[1])
    assert np.array_equal(similarity, again[2])
    best = np.argmax(vectors @ centroids.T, axis=1)
    assert np.mean(best == assignment) > 0.999, "each row goes to its most similar centroid"
    assert np.allclose(similarity, np.einsum("nd,nd->n", vectors, centroids[assignment]))


def test_kmeans_trains_on_at_most_its_points_per_centroid(monkeypatch):
    """Faiss would copy every point before subsampling: a memory-mapped pool is read for its sample only."""
    trained_on = []
    original = knn.training_sample
    monkeypatch.setattr(
        knn, "training_sample", lambda v, size, seed: trained_on.append(size) or original(v, size, seed)
    )
    vectors = planted_vectors(6000, 16, seed=5)
    knn.spherical_kmeans(vectors, 4, 5, seed=0)
    assert trained_on == [knn.KMEANS_POINTS_PER_CENTROID * 4]
    assert len(original(vectors, 1024, 0)) == 1024 and len(original(vectors, 10**6, 0)) == 6000


def test_pair_similarity_matches_the_pairs_dot_products_across_batches(monkeypatch):
    vectors = planted_vectors(500, 16, seed=6)
    a, b = np.random.default_rng(0).integers(0, 500, (2, 1000))
    monkeypatch.setattr(knn, "PAIR_BATCH", 64)
    assert np.allclose(knn.pair_similarity(vectors, a, b), np.einsum("nd,nd->n", vectors[a], vectors[b]))


OPEN_AND_SEARCH = """
import sys, numpy as np
from pathlib import Path
from curation.knn import IndexSpec, open_saved
def anon():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1]) * 1024
folder, kind = Path(sys.argv[1]), sys.argv[2]
before = anon()
spec = IndexSpec(kind=kind, nlist=16, nprobe=4, device="cpu")
index, vectors = open_saved(folder / "index.faiss", folder / "vectors.npy", spec)
index.search(np.ascontiguousarray(vectors[:10]), 5)
print(anon() - before)
"""


@pytest.mark.skipif(not hasattr(faiss, "IO_FLAG_MMAP_IFC"), reason="Faiss < 1.11 copies flat indexes")
@pytest.mark.parametrize("kind", ["exact", "ivf_flat"])
def test_search_tasks_map_a_saved_flat_index_instead_of_copying_it(kind, tmp_path):
    """Many search tasks on one node open the same index: a copy each would multiply its size."""
    np.save(tmp_path / "vectors.npy", planted_vectors(60_000, 128, seed=7))
    index_path = knn.saved_index(tmp_path / "vectors.npy", IndexSpec(kind=kind, nlist=16, device="cpu"))
    size = index_path.stat().st_size
    out = subprocess.run([sys.executable, "-c", OPEN_AND_SEARCH, str(tmp_path), kind], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) < size / 4, (
        f"the task grew by {int(out.stdout.split()[-1]):,} bytes, index {size:,}"
    )
