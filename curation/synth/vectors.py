"""Synthetic embedding sets with planted near duplicates, for kNN-graph tests and benchmarks."""

from __future__ import annotations

import numpy as np


def planted_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """`n` random unit vectors; 10% of them are near copies (cosine 0.7-0.95) of others.

    Random directions are the hard case for IVF (no cluster structure to exploit), so recall
    measured here is a floor for real embeddings.
    """
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    _normalise(vectors)
    copies = rng.choice(n, n // 10, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), copies), n // 10)
    noise = rng.standard_normal((len(copies), dim), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    mix = rng.uniform(0.7, 0.95, (len(copies), 1)).astype(np.float32)
    vectors[copies] = mix * vectors[sources] + np.sqrt(1 - mix**2) * noise
    _normalise(vectors)
    return vectors


def _normalise(vectors: np.ndarray) -> None:
    """Unit rows, in place; einsum norms, because `np.linalg.norm` squares a copy of the whole array,
    which would double the peak memory that benchmarks/dedup.py measures."""
    vectors /= np.sqrt(np.einsum("nd,nd->n", vectors, vectors))[:, None]
