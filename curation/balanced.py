"""Balanced sampling from hierarchical k-means (Vo et al. 2024, "Automatic data curation for SSL").

Web data is long-tailed: a random sample is mostly the few concepts the web repeats. Clustering
the pool in several levels (fine clusters, then clusters of their centroids, ...) and sampling top
down, giving every cluster of a level an equal share of its parent's budget (a cluster with
fewer images than its share gives the rest back to its siblings), yields a sample whose concepts
are far more even, without any seed set: DINOv2's "uncurated but balanced" source.

Each level's k-means is followed by resampling steps: k-means again on only the points nearest
each centroid, which pulls centroids away from dense regions towards the support of the data,
so that dense concepts do not capture most of the clusters.

Level 0 runs on the whole pool, memory-mapped: k-means trains on a sample of
KMEANS_POINTS_PER_CENTROID points a cluster, and each resampling round and the final assignment
is one pass over the pool in blocks, so the process holds a cluster and a similarity a point (and,
to sample, one sort of the clusters) beside the sample. Levels above cluster centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from curation.knn import KMEANS_POINTS_PER_CENTROID, Members, nearest_centroids, row_blocks, training_sample


@dataclass(frozen=True)
class ClusterTree:
    """parents[0][i]: the level-0 cluster of point i; parents[l][c]: the level-l cluster of level-(l-1)
    cluster c; leaf_similarity[i]: point i's similarity to its level-0 centroid."""

    parents: list[np.ndarray]
    leaf_centroids: np.ndarray
    leaf_similarity: np.ndarray


@dataclass(frozen=True)
class Level:
    """One level's k-means: its centroids, and each point's cluster and similarity to that centroid."""

    centroids: np.ndarray
    labels: np.ndarray
    similarity: np.ndarray


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
    points: np.ndarray, k: int, iterations: int, seed: int, gpu: bool, init: np.ndarray | None = None
) -> faiss.Kmeans:
    """Spherical k-means of `points`, which are in memory: a training sample or a resampling round's points."""
    kmeans = faiss.Kmeans(points.shape[1], k, niter=iterations, seed=seed, spherical=True, gpu=gpu)
    if init is None and len(points) * k <= PLUS_PLUS_BUDGET:
        init = kmeans_plus_plus(points, k, seed)
    kmeans.train(points, init_centroids=init)
    return kmeans


def nearest_points(points: np.ndarray, centroids: np.ndarray, count: int, gpu: bool = False) -> np.ndarray:
    """The rows of the `count` points nearest each centroid, all centroids' together, sorted. Searched
    knn.ADD_BATCH points at a time, keeping each centroid's best `count` so far: a flat index of the whole
    level would copy every point (6 TB for the paper's pool at D=1280)."""
    resources = faiss.StandardGpuResources() if gpu else None
    best_sims = np.zeros((len(centroids), 0), np.float32)
    best_rows = np.zeros((len(centroids), 0), np.int64)
    for block_rows in row_blocks(len(points), "points nearest each centroid"):
        block = np.ascontiguousarray(points[block_rows])
        sims, rows = _exact_search(block, centroids, min(count, len(block)), resources)
        sims, rows = np.hstack([best_sims, sims]), np.hstack([best_rows, rows + block_rows.start])
        order = np.lexsort((rows, -sims), axis=1)[:, :count]
        best_sims, best_rows = np.take_along_axis(sims, order, 1), np.take_along_axis(rows, order, 1)
    return np.unique(best_rows)


def _exact_search(
    block: np.ndarray, queries: np.ndarray, count: int, resources: faiss.StandardGpuResources | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's `count` nearest rows of `block` (similarities, rows), on a GPU when given its
    resources: a pass of 100K centroids over 1.2B points is 3e17 FLOPs, days on CPU cores."""
    if resources is None:
        return faiss.knn(queries, block, count, metric=faiss.METRIC_INNER_PRODUCT)
    index = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatIP(block.shape[1]))
    index.add(block)
    return index.search(queries, count)


def kmeans_with_resampling(
    points: np.ndarray, k: int, iterations: int, steps: int, per_cluster: int, seed: int, gpu: bool = False
) -> Level:
    """k-means on a sample of KMEANS_POINTS_PER_CENTROID points a cluster, then `steps` rounds of
    k-means on the `per_cluster` points nearest each centroid; every point assigned to the last
    centroids. `points` may be memory-mapped: passes over them read knn.ADD_BATCH rows at a time."""
    kmeans = _kmeans(training_sample(points, KMEANS_POINTS_PER_CENTROID * k, seed), k, iterations, seed, gpu)
    for step in range(steps):
        chosen = nearest_points(points, kmeans.centroids, per_cluster, gpu)
        if len(chosen) < k:
            break
        sample = np.ascontiguousarray(points[chosen])
        kmeans = _kmeans(sample, k, iterations, seed + step + 1, gpu, init=kmeans.centroids)
    labels = np.empty(len(points), np.int32)
    similarity = np.empty(len(points), np.float32)
    for rows, nearest, sims in nearest_centroids(points, kmeans):
        labels[rows], similarity[rows] = nearest, sims
    return Level(kmeans.centroids, labels, similarity)


def fit_tree(
    vectors: np.ndarray,
    levels: list[int],
    iterations: int,
    steps: int,
    per_cluster: int,
    seed: int,
    gpu: bool = False,
) -> ClusterTree:
    """Each level clusters the centroids of the level below; level 0 clusters `vectors`, in memory or
    memory-mapped (it holds 8 bytes a point: its cluster and similarity)."""
    found: list[Level] = []
    for level, k in enumerate(levels):
        points = found[-1].centroids if found else vectors
        k = min(k, len(points))
        found.append(kmeans_with_resampling(points, k, iterations, steps, per_cluster, seed + level, gpu))
    return ClusterTree([f.labels for f in found], found[0].centroids, found[0].similarity)


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
    # members[l][c]: the level-(l-1) clusters (for l = 0, the points) under cluster c of level l
    members = [Members.of(tree.parents[0], len(tree.leaf_centroids))]
    members += [Members.of(parents, int(parents.max()) + 1) for parents in tree.parents[1:]]
    # sizes[l][c]: points under cluster c of level l
    sizes = [members[0].counts]
    for level in range(1, len(tree.parents)):
        sizes.append(np.bincount(tree.parents[level], weights=sizes[-1], minlength=len(members[level].counts)))
    chosen: list[np.ndarray] = []

    def descend(level: int, clusters: np.ndarray, budget: int) -> None:
        for cluster, n in zip(clusters, share(sizes[level][clusters].astype(np.int64), budget), strict=True):
            if n == 0:
                continue
            if level == 0:
                chosen.append(rng.choice(members[0][cluster], size=int(n), replace=False))
            else:
                descend(level - 1, members[level][cluster], int(n))

    top = len(tree.parents) - 1
    descend(top, np.arange(len(sizes[top])), budget)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
