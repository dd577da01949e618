"""Faiss search: exact scores from approximate indexes, and IVF-PQ edge recall against exact search."""

from __future__ import annotations

import numpy as np
import pytest

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
