"""Balanced sampling from hierarchical k-means (Vo et al. 2024, "Automatic data curation for SSL").

Web data is long-tailed: a random sample is mostly the few concepts the web repeats. Clustering
the pool in several levels (fine clusters, then clusters of their centroids, ...) and sampling top
down, giving every cluster of a level an equal share of its parent's budget (a cluster with
fewer images than its share gives the rest back to its siblings), yields a sample whose concepts
are far more even, without any seed set: DINOv2's "uncurated but balanced" source.

Each level's k-means is followed by resampling steps: k-means again on only the points nearest
each centroid, which pulls centroids away from dense regions towards the support of the data,
so that dense concepts do not capture most of the clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class ClusterTree:
    """parents[0][i]: the level-0 cluster of point i; parents[l][c]: the level-l cluster of level-(l-1) cluster c."""

    parents: list[np.ndarray]
    leaf_centroids: np.ndarray


def kmeans_plus_plus(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (D² sampling). faiss seeds with random points, which on long-tailed data puts
    most seeds in the dense concept; a coarse level then never separates the rare ones."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(points)))]
    distance = np.full(len(points), np.inf)
    for _ in range(1, k):
        distance = np.minimum(distance, np.maximum(0.0, 2.0 - 2.0 * points @ points[chosen[-1]]))
        total = distance.sum()
        chosen.append(int(rng.choice(len(points), p=distance / total)) if total > 0 else int(rng.integers(len(points))))
    return np.ascontiguousarray(points[chosen])


PLUS_PLUS_BUDGET = 2_000_000_000  # n·k distance evaluations; beyond it (fine levels at scale) faiss seeds randomly


def _kmeans(
    points: np.ndarray, k: int, iterations: int, seed: int, init: np.ndarray | None = None, gpu: bool = False
) -> np.ndarray:
    kmeans = faiss.Kmeans(points.shape[1], k, niter=iterations, seed=seed, spherical=True, gpu=gpu)
    if init is None and len(points) * k <= PLUS_PLUS_BUDGET:
        init = kmeans_plus_plus(points, k, seed)
    kmeans.train(points, init_centroids=init)
    return kmeans.centroids


def _assign(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    sims, nearest = index.search(points, 1)
    return nearest[:, 0], sims[:, 0]


def kmeans_with_resampling(
    points: np.ndarray, k: int, iterations: int, steps: int, per_cluster: int, seed: int, gpu: bool = False
) -> np.ndarray:
    """k-means, then `steps` rounds of k-means on the `per_cluster` points nearest each centroid."""
    centroids = _kmeans(points, k, iterations, seed, gpu=gpu)
    for step in range(steps):
        index = faiss.IndexFlatIP(points.shape[1])
        index.add(points)
        _, nearest = index.search(centroids, min(per_cluster, len(points)))
        chosen = np.unique(nearest[nearest >= 0])
        if len(chosen) < k:
            break
        centroids = _kmeans(points[chosen], k, iterations, seed + step + 1, init=centroids, gpu=gpu)
    return centroids


def fit_tree(
    vectors: np.ndarray,
    levels: list[int],
    iterations: int,
    steps: int,
    per_cluster: int,
    seed: int,
    gpu: bool = False,
) -> ClusterTree:
    parents, points, leaf_centroids = [], vectors, None
    for level, k in enumerate(levels):
        k = min(k, len(points))
        centroids = kmeans_with_resampling(points, k, iterations, steps, per_cluster, seed + level, gpu)
        parents.append(_assign(points, centroids)[0])
        if leaf_centroids is None:
            leaf_centroids = centroids
        points = centroids
    return ClusterTree(parents, leaf_centroids)


def share(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Split `budget` over groups as evenly as their sizes allow (water filling; ties to lower ids)."""
    take = np.zeros(len(sizes), np.int64)
    budget = min(budget, int(sizes.sum()))
    while budget > 0:
        open_ = np.flatnonzero(take < sizes)
        each = max(1, budget // len(open_))
        for g in open_:
            extra = min(each, sizes[g] - take[g], budget)
            take[g] += extra
            budget -= extra
            if budget == 0:
                break
    return take


def balanced_sample(tree: ClusterTree, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Point indices, top down: each cluster's budget shared evenly by its children; random within leaves."""
    members_of_leaf = [np.flatnonzero(tree.parents[0] == c) for c in range(len(tree.leaf_centroids))]
    # sizes[l][c]: points under cluster c of level l
    sizes = [np.array([len(m) for m in members_of_leaf])]
    for level in range(1, len(tree.parents)):
        sizes.append(np.bincount(tree.parents[level], weights=sizes[-1], minlength=tree.parents[level].max() + 1))
    top = len(tree.parents) - 1

    def children(level: int, cluster: int) -> np.ndarray:
        return np.flatnonzero(tree.parents[level] == cluster)

    chosen: list[np.ndarray] = []

    def descend(level: int, clusters: np.ndarray, budget: int) -> None:
        for cluster, n in zip(clusters, share(sizes[level][clusters].astype(np.int64), budget), strict=True):
            if n == 0:
                continue
            if level == 0:
                chosen.append(rng.choice(members_of_leaf[cluster], size=int(n), replace=False))
            else:
                descend(level - 1, children(level, cluster), int(n))

    descend(top, np.arange(len(sizes[top])), budget)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
