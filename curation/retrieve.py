"""Retrieve stage: per source row of the paper's Table 15, images of the deduplicated, decontaminated pool.

Strategies (DINOv2 paper, Sec. 3 and App. A.2):
- `as_is`: the seed set itself enters the curated set;
- `sample`: the `n` nearest pool images of every query image;
- `cluster`: the pool is k-means clustered; every cluster holding at least `min_queries` query
  images (paper: "more than 3") contributes `images_per_cluster` images, at most `max_images` per set;
- `balanced`: no seed set; `images` pool images sampled evenly over the concepts of a hierarchical
  k-means of the pool (curation/balanced.py), the "uncurated but balanced" web source.

Searches run on the `retrieval` role's embeddings. Within a cluster the images nearest its
centroid are taken first; eligible clusters are taken in decreasing order of query count (ties:
cluster id), so a cap keeps the clusters the seed set is densest in.

    RUN/retrieve/<row>/selected.parquet   key, collection, query_key, similarity   (sorted by key)
    RUN/retrieve/rows.json                per row: strategy, target, retrieved, shortfall and cause
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from curation.embed import embedded_keys, embeddings_on_disk, keys_at
from curation.ingest import POOL
from curation.knn import IndexSpec, open_saved, saved_index, search, spherical_kmeans, use_gpu
from foundation.config import Section
from foundation.executors import MapFn, run_unfinished
from foundation.files import write_parquet
from foundation.storage import ConfigPath


class AsIs(Section):
    kind: Literal["as_is"] = "as_is"


class Sample(Section):
    kind: Literal["sample"] = "sample"
    n: int = Field(ge=1, description="nearest pool images taken per query image")


class Cluster(Section):
    kind: Literal["cluster"] = "cluster"
    images_per_cluster: int = Field(ge=1)
    min_queries: int = Field(4, ge=1, description="query images a cluster must hold to contribute")
    max_images: int | None = Field(None, ge=1, description="cap on the images this set contributes")


class Balanced(Section):
    """No seed set: a sample of the pool balanced over concepts by hierarchical k-means (Vo et al. 2024)."""

    kind: Literal["balanced"] = "balanced"
    images: int = Field(ge=1, description="pool images to take")
    levels: list[int] = Field(
        default_factory=lambda: [100_000, 10_000, 1_000], description="clusters per level, finest first"
    )
    resampling_steps: int = Field(3, ge=0, description="k-means rounds on the points nearest each centroid")
    resample_points: int = Field(5, ge=1, description="points nearest each centroid kept per resampling round")

    @model_validator(mode="after")
    def _levels_shrink(self) -> Balanced:
        if not self.levels or any(a <= b for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ValueError(f"levels must be non-empty and strictly decreasing (finest first), got {self.levels}")
        return self


Strategy = Annotated[AsIs | Sample | Cluster | Balanced, Field(discriminator="kind")]


class SeedSet(Section):
    """One source row: a curated seed dataset and how pool images are retrieved for it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="row id; also the retrieve/<name>/ folder")
    dataset: str = Field("", description="display name, e.g. 'ImageNet-22k'")
    split: str = ""
    task: str = ""
    path: ConfigPath | None = Field(None, description="the seed images: a folder or tar shards")
    images: int | None = Field(None, ge=0, description="size of the seed set (for planning)")
    strategy: Strategy
    expected: int | None = Field(None, ge=0, description="images this row should yield (paper's count)")


class RetrieveConfig(Section):
    """All source rows plus the pool clustering shared by the `cluster` rows."""

    execution_fields: ClassVar[frozenset[str]] = frozenset({"chunk_size", "threads"})

    sources: list[SeedSet] = Field(default_factory=list)
    clusters: int = Field(100_000, ge=1, description="k-means clusters of the pool (paper: 100,000)")
    role: str = Field("retrieval", description="which embed role to search in")
    index: IndexSpec = IndexSpec()
    kmeans_iterations: int = Field(20, ge=1)
    chunk_size: int = Field(50_000, ge=1, description="query rows per search task")
    threads: int = Field(
        0,
        ge=0,
        description="Faiss threads per search task, and the CPUs a Ray task reserves (0: 1 on Ray, all cores "
        "locally); each task holds a copy of fast-scan IVF-PQ codes, so wider tasks mean fewer copies a node",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> RetrieveConfig:
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"source row names must be unique; repeated: {repeated}")
        return self

    def expected_total(self) -> int:
        return sum(s.expected or 0 for s in self.sources)


STAGE = "retrieve"
SELECTION_SCHEMA = pa.schema(
    [("key", pa.string()), ("collection", pa.string()), ("query_key", pa.string()), ("similarity", pa.float32())]
)


@dataclass
class Pool:
    """The images retrieval draws from: decontaminated pool keys (Arrow) and their retrieval vectors,
    memory-mapped from `vectors_path` (absent when the pool is empty)."""

    keys: pa.Array
    vectors: np.ndarray
    vectors_path: Path

    @classmethod
    def load(cls, embed_dir: Path, role: str, decontam_dir: Path, vectors_path: Path) -> Pool:
        keep = pq.read_table(decontam_dir / "keep.parquet", columns=["key"])["key"].combine_chunks()
        return cls(*embeddings_on_disk(embed_dir / role / POOL, vectors_path, keep), vectors_path)


@dataclass
class Selection:
    """What one row retrieved, and why it may fall short of its target: Arrow keys and numpy
    similarities, since a row can take tens of millions of images (ImageNet-22k's 4 nearest of 14M
    queries), and a Python object an image would cost more than the pool's own keys."""

    keys: pa.ChunkedArray
    collection: str
    query_keys: pa.ChunkedArray
    similarities: np.ndarray
    target: int
    cause: str = ""

    @classmethod
    def empty(cls, target: int, cause: str) -> Selection:
        none = pa.chunked_array([], pa.string())
        return cls(none, POOL, none, np.zeros(0, np.float32), target, cause)

    def table(self) -> pa.Table:
        table = pa.table(
            {
                "key": self.keys,
                "collection": pa.repeat(pa.scalar(self.collection, pa.string()), len(self.keys)),
                "query_key": self.query_keys,
                "similarity": pa.array(self.similarities, pa.float32()),
            },
            schema=SELECTION_SCHEMA,
        )
        return table.sort_by("key")


def as_is(query_keys: pa.Array, collection: str) -> Selection:
    keys = keys_at(query_keys, np.arange(len(query_keys)))
    return Selection(keys, collection, keys, np.ones(len(keys), np.float32), len(keys))


def cluster_names(clusters: np.ndarray) -> pa.ChunkedArray:
    """`cluster:<id>` for each cluster id: what a selection names as the query of a cluster's images."""
    ids = pa.array(clusters.astype(np.int64)).cast(pa.string())
    return pa.chunked_array([pc.binary_join_element_wise("cluster:", ids, "")], pa.string())


@dataclass(frozen=True)
class QueryTask:
    """Search query rows [start, stop) against the saved pool index; write (query, pool_row, similarity) to `out`."""

    start: int
    stop: int
    queries_path: str
    index_path: str
    vectors_path: str
    out: str
    n: int
    spec: IndexSpec
    threads: int


HIT_SCHEMA = pa.schema([("query", pa.int64()), ("pool_row", pa.int64()), ("similarity", pa.float32())])


def search_queries(task: QueryTask) -> int:
    """One chunk of a seed set's search, written atomically (a re-run skips finished chunks)."""
    if task.threads:
        faiss.omp_set_num_threads(task.threads)
    index, vectors = open_saved(task.index_path, task.vectors_path, task.spec)
    queries = np.ascontiguousarray(np.load(task.queries_path, mmap_mode="r")[task.start : task.stop])
    sims, ids = search(index, task.spec, vectors, queries, task.n)
    query = np.repeat(np.arange(task.start, task.stop), ids.shape[1])
    found = ids.ravel() >= 0
    table = pa.table(
        {"query": query[found], "pool_row": ids.ravel()[found], "similarity": sims.ravel()[found]}, schema=HIT_SCHEMA
    )
    write_parquet(table, task.out)
    return table.num_rows


@dataclass(frozen=True)
class PoolSearch:
    """The pool index saved for search tasks, and how to spread them."""

    index_path: Path
    vectors_path: Path
    spec: IndexSpec
    map_fn: MapFn
    chunk_size: int
    threads: int

    def hits(self, queries_path: Path, n: int, work_dir: Path) -> pa.Table:
        """All (query, pool_row, similarity) of the `n` nearest of each query saved at `queries_path`
        (an .npy file the tasks map), in query order, searched as tasks."""
        (work_dir / "hits").mkdir(parents=True, exist_ok=True)
        count = len(np.load(queries_path, mmap_mode="r"))
        tasks = [
            QueryTask(
                start,
                min(start + self.chunk_size, count),
                str(queries_path),
                str(self.index_path),
                str(self.vectors_path),
                str(work_dir / "hits" / f"{start:012d}.parquet"),
                n,
                self.spec,
                self.threads,
            )
            for start in range(0, count, self.chunk_size)
        ]
        run_unfinished(self.map_fn, search_queries, tasks)
        return pa.concat_tables([pq.read_table(t.out) for t in tasks])


def sample(
    pool: Pool, search_pool: PoolSearch, queries_path: Path, query_keys: pa.Array, n: int, work_dir: Path
) -> Selection:
    """The `n` nearest pool images of every query; an image near several queries is taken once, for
    its most similar query (of equals, the first)."""
    target = n * len(query_keys)
    if not len(pool.keys) or not len(query_keys):
        return Selection.empty(target, "empty pool or seed set")
    hits = search_pool.hits(queries_path, min(n, len(pool.keys)), work_dir)
    row, similarity = hits["pool_row"].to_numpy(), hits["similarity"].to_numpy()
    best = best_hits(row, similarity)
    rows = row[best]
    cause = (
        ""
        if len(rows) == target
        else (
            f"{target - len(rows)} fewer: some pool images are among the {n} nearest of several queries"
            if len(pool.keys) >= n
            else f"the pool holds only {len(pool.keys)} images"
        )
    )
    query_of = keys_at(query_keys, hits["query"].to_numpy()[best])
    return Selection(keys_at(pool.keys, rows), POOL, query_of, similarity[best], target, cause)


def best_hits(rows: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """For each distinct pool row among the hits, the hit it is taken for: the most similar, of
    equals the first; in pool row order."""
    order = np.lexsort((np.arange(len(rows)), -similarity, rows))
    first = np.ones(len(order), bool)
    first[1:] = rows[order[1:]] != rows[order[:-1]]
    return order[first]


@dataclass
class PoolClusters:
    """k-means of the pool (spherical, seeded): each image's cluster and its similarity to the centroid,
    and the rows sorted by cluster, nearest the centroid first (ties by row), so that a cluster's
    members are a slice: a scan of the pool per cluster would cost clusters x images."""

    centroids: np.ndarray
    assignment: np.ndarray
    centroid_similarity: np.ndarray
    by_cluster: np.ndarray
    bounds: np.ndarray

    @classmethod
    def fit(cls, pool: Pool, clusters: int, iterations: int, seed: int, gpu: bool = False) -> PoolClusters:
        k = max(1, min(clusters, len(pool.keys)))
        centroids, assignment, similarity = spherical_kmeans(pool.vectors, k, iterations, seed, gpu)
        by_cluster = np.lexsort((-similarity, assignment))
        bounds = np.searchsorted(assignment[by_cluster], np.arange(k + 1))
        return cls(centroids, assignment, similarity, by_cluster, bounds)

    def members(self, cluster: int) -> np.ndarray:
        """The cluster's rows, nearest its centroid first."""
        return self.by_cluster[self.bounds[cluster] : self.bounds[cluster + 1]]

    def nearest(self, queries: np.ndarray) -> np.ndarray:
        """Each query's cluster, NEAREST_BLOCK query-centroid products at a time (75K Food-101 queries
        against 100K centroids would be 30 GB at once); einsum, not BLAS, so that no block size or
        thread count changes a tie (see `spherical_kmeans`)."""
        step = max(1, NEAREST_BLOCK // max(1, len(self.centroids)))
        found = [np.zeros(0, np.int64)]
        for start in range(0, len(queries), step):
            block = np.ascontiguousarray(queries[start : start + step])
            found.append(np.argmax(np.einsum("qd,cd->qc", block, self.centroids), axis=1))
        return np.concatenate(found)


NEAREST_BLOCK = 1 << 24


def cluster(
    pool: Pool, clusters: PoolClusters, queries: np.ndarray, query_keys: pa.Array, strategy: Cluster
) -> Selection:
    """From each cluster holding >= min_queries queries, the images nearest its centroid, up to the caps."""
    counts = (
        np.bincount(clusters.nearest(queries), minlength=len(clusters.centroids))
        if len(query_keys)
        else np.zeros(len(clusters.centroids), np.int64)
    )
    eligible = sorted(
        (c for c in range(len(counts)) if counts[c] >= strategy.min_queries), key=lambda c: (-counts[c], c)
    )
    target = len(eligible) * strategy.images_per_cluster
    if strategy.max_images is not None:
        target = min(target, strategy.max_images)
    taken, room, short_clusters = [np.zeros(0, np.int64)], target, 0
    for c in eligible:
        taken.append(clusters.members(c)[: min(strategy.images_per_cluster, room)])
        short_clusters += len(taken[-1]) < min(strategy.images_per_cluster, room)
        room -= len(taken[-1])
        if room <= 0:
            break
    rows = np.concatenate(taken)
    cause = ""
    if not eligible:
        cause = f"no cluster holds {strategy.min_queries} or more query images"
    elif len(rows) < target:
        cause = f"{short_clusters} eligible clusters hold fewer than {strategy.images_per_cluster} pool images"
    query_of = cluster_names(clusters.assignment[rows])
    return Selection(keys_at(pool.keys, rows), POOL, query_of, clusters.centroid_similarity[rows], target, cause)


def balanced(pool: Pool, strategy: Balanced, iterations: int, seed: int, gpu: bool = False) -> Selection:
    """`strategy.images` pool images sampled top down through a hierarchical k-means of the pool."""
    from curation.balanced import balanced_sample, fit_tree

    if not len(pool.keys):
        return Selection.empty(strategy.images, "empty pool")
    tree = fit_tree(
        pool.vectors, strategy.levels, iterations, strategy.resampling_steps, strategy.resample_points, seed, gpu
    )
    rows = balanced_sample(tree, strategy.images, np.random.default_rng(seed))
    cause = "" if len(rows) == strategy.images else f"the pool holds only {len(pool.keys)} images"
    leaves = cluster_names(tree.parents[0][rows])
    return Selection(keys_at(pool.keys, rows), POOL, leaves, tree.leaf_similarity[rows], strategy.images, cause)


def run_retrieve(
    config: RetrieveConfig,
    embed_dir: Path,
    decontam_dir: Path,
    collections: dict[str, str],
    work_dir: Path,
    map_fn: MapFn,
    seed: int = 0,
) -> dict[str, int]:
    """Retrieve for every source row into `work_dir/<row>/`; `collections` maps a row to its seed set.

    `sample` rows search their queries in chunks of `chunk_size` as `map_fn` tasks (Ray tasks on a
    cluster) against the pool index saved once; finished chunks survive a kill.
    """
    search_dir = work_dir / "search"  # work files, removed when every row is done
    pool = Pool.load(embed_dir, config.role, decontam_dir, search_dir / "vectors.npy")
    search_pool = None  # the index is built on the first `sample` row, the clustering on the first `cluster` row
    pool_clusters = None
    report, counts = {}, {}
    for row in config.sources:
        queries_path = search_dir / row.name / "queries.npy"
        if row.strategy.kind == "balanced":
            query_keys, queries = pa.array([], pa.string()), None
        elif row.strategy.kind == "as_is":
            query_keys, queries = embedded_keys(embed_dir / config.role / collections[row.name]), None
        else:
            query_keys, queries = embeddings_on_disk(embed_dir / config.role / collections[row.name], queries_path)
        if row.strategy.kind == "balanced":
            selection = balanced(pool, row.strategy, config.kmeans_iterations, seed, gpu=use_gpu(config.index))
        elif row.strategy.kind == "as_is":
            selection = as_is(query_keys, collections[row.name])
        elif row.strategy.kind == "sample":
            if search_pool is None and len(pool.keys):
                index_path = saved_index(pool.vectors_path, config.index, seed)
                search_pool = PoolSearch(
                    index_path, pool.vectors_path, config.index, map_fn, config.chunk_size, config.threads
                )
            selection = sample(pool, search_pool, queries_path, query_keys, row.strategy.n, search_dir / row.name)
        elif not len(pool.keys):
            selection = Selection.empty(0, "empty pool")
        else:
            if pool_clusters is None:
                pool_clusters = PoolClusters.fit(
                    pool, config.clusters, config.kmeans_iterations, seed, gpu=use_gpu(config.index)
                )
            selection = cluster(pool, pool_clusters, queries, query_keys, row.strategy)
        (work_dir / row.name).mkdir(parents=True, exist_ok=True)
        pq.write_table(selection.table(), work_dir / row.name / "selected.parquet")
        report[row.name] = {
            "strategy": row.strategy.kind,
            "queries": len(query_keys),
            "target": selection.target,
            "retrieved": len(selection.keys),
            "shortfall": selection.target - len(selection.keys),
            "cause": selection.cause,
            "paper": row.expected,
        }
        counts[f"{row.name}.retrieved"] = len(selection.keys)
    (work_dir / "rows.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    counts["pool"] = len(pool.keys)
    shutil.rmtree(search_dir, ignore_errors=True)
    return counts


def summary_line(counts: dict[str, int]) -> str:
    rows = {k.removesuffix(".retrieved"): v for k, v in counts.items() if k.endswith(".retrieved")}
    return (
        f"retrieve: {sum(rows.values())} images for {len(rows)} rows from a pool of {counts['pool']} ("
        + ", ".join(f"{name} {n}" for name, n in rows.items())
        + ")"
    )
