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


def grouped_vectors(n: int, dim: int, group: int, seed: int = 0) -> np.ndarray:
    """`n` unit vectors in groups of `group` consecutive rows, each a near copy (cosine ~0.9) of its
    group's random centre: every pair inside a group is above dedup's 0.6, and pairs across groups
    are near 0. A group of k + 1 images gives each of them k neighbours above the threshold, the
    most edges a kNN graph of k neighbours holds; it is what a web crawl's repeated picture (a
    placeholder, a logo) looks like to dedup."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((-(-n // group), dim), dtype=np.float32)
    _normalise(centres)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    _normalise(vectors)
    vectors *= np.float32(np.sqrt(1 - 0.9**2))
    vectors += np.float32(0.9) * np.repeat(centres, group, axis=0)[:n]
    _normalise(vectors)
    return vectors


def _normalise(vectors: np.ndarray) -> None:
    """Unit rows, in place; einsum norms, because `np.linalg.norm` squares a copy of the whole array,
    which would double the peak memory that benchmarks/dedup.py measures."""
    vectors /= np.sqrt(np.einsum("nd,nd->n", vectors, vectors))[:, None]
