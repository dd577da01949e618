"""Dedup stage: a kNN graph over copy-detection embeddings, connected components, one image kept per component.

The paper's recipe (DINOv2 App. A.3): k = 64 nearest neighbours per image, an edge where cosine
> 0.6 (for SSCD embeddings), connected components, one image kept per component. `mode: semdedup`
is the alternative of Abbas et al. 2023: k-means the embeddings, link pairs inside a cluster at
cosine >= 1 - eps, and keep per component the image farthest from (or nearest to) its centroid.

    RUN/dedup/keep.parquet      key, component, component_size           (sorted by key)
    RUN/dedup/removed.parquet   key, component, kept_key, similarity     (similarity to kept_key)
    RUN/dedup/edges/*.parquet   src_key, dst_key, similarity             (every edge of the graph)
    RUN/dedup/nearest.parquet   key, nearest_key, similarity             (knn mode: each image's most
                                similar other image, above the threshold or not: where the threshold cuts)

Keep rule (`mode: knn`): the image with the most pixels, then the smallest key — deterministic,
and the best copy of a picture is usually the largest.

The graph is searched in query chunks (`chunk_size` rows) that run as independent tasks against
one index saved in the stage folder (each worker opens it with `knn.open_saved`), so chunks spread
over a local process pool or Ray tasks and each writes its own edge file; a killed stage keeps
finished chunks.
An edge counts when either end finds the other: approximate search misses some neighbours in one
direction only, so keeping both directions (deduplicated at the end) raises the graph's recall.
The final edge files hold each undirected edge once, sorted, with its similarity recomputed from
the two vectors, so they do not depend on chunking or on which side found the edge.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.embed import embeddings_on_disk, keys_at
from curation.ingest import POOL
from curation.knn import (
    IndexSpec,
    Members,
    inner_products_by_id,
    open_saved,
    pair_similarity,
    saved_index,
    search,
    spherical_kmeans,
)
from foundation.config import Section
from foundation.errors import StageError
from foundation.executors import MapFn, run_unfinished
from foundation.files import write_parquet

STAGE = "dedup"
ROW_EDGES = "edge_rows"  # work files: edges as row numbers, renamed to keys in edges/ at the end
ROW_NEAREST = "nearest_rows"  # work files: each row's nearest other row
VECTORS = "vectors.npy"  # work file: the pool's vectors, memory-mapped by the stage and its search tasks
EDGE_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("similarity", pa.float32())])


class DedupConfig(Section):
    execution_fields: ClassVar[frozenset[str]] = frozenset({"chunk_size", "threads"})

    role: str = Field("copy", description="which embed role to read (copy-detection features)")
    mode: Literal["knn", "semdedup"] = "knn"
    k: int = Field(64, ge=1, description="neighbours searched per image (paper: 64)")
    threshold: float = Field(0.6, gt=-1, le=1, description="edge when cosine >= threshold (paper: 0.6 with SSCD)")
    index: IndexSpec = IndexSpec()
    semdedup_clusters: int | None = Field(
        None, ge=1, description="k-means clusters; default one per SEMDEDUP_CLUSTER_IMAGES pool images"
    )
    semdedup_eps: float = Field(0.05, gt=0, lt=1, description="pairs at cosine >= 1 - eps are duplicates")
    semdedup_keep: Literal["farthest", "nearest"] = Field("farthest", description="from the cluster centroid")
    chunk_size: int = Field(50_000, ge=1, description="query rows per search task")
    threads: int = Field(
        0,
        ge=0,
        description="Faiss threads per search task, and the CPUs a Ray task reserves (0: 1 on Ray, all cores "
        "locally); each task holds a copy of fast-scan IVF-PQ codes, so wider tasks mean fewer copies a node",
    )


@dataclass(frozen=True)
class EdgeTask:
    """Search rows [start, stop) of the pool against the saved index; write their edges to `out` and
    each row's nearest other row to `nearest_out`."""

    start: int
    stop: int
    index_path: str
    vectors_path: str
    out: str
    nearest_out: str
    k: int
    threshold: float
    spec: IndexSpec
    threads: int


def search_chunk(task: EdgeTask) -> int:
    """Edges (src < dst) and nearest neighbours of one query chunk, written atomically; returns the edge count.

    The nearest file is written first: the edge file marks the chunk done.
    """
    if task.threads:
        faiss.omp_set_num_threads(task.threads)
    index, vectors = open_saved(task.index_path, task.vectors_path, task.spec)
    queries = np.ascontiguousarray(vectors[task.start : task.stop])
    sims, ids = search(index, task.spec, vectors, queries, task.k + 1)
    rows = np.arange(task.start, task.stop)
    other = (ids >= 0) & (ids != rows[:, None])  # never a self-loop
    write_parquet(
        pa.table({"row": rows, "nearest": _nearest(queries, vectors, np.where(other, ids, -1))}), task.nearest_out
    )
    r, c = np.nonzero(other & (sims >= task.threshold))
    src, dst = rows[r], ids[r, c]  # stored smaller row first, as the final files hold them
    table = pa.table(
        {"src": np.minimum(src, dst), "dst": np.maximum(src, dst), "similarity": sims[r, c]}, schema=EDGE_SCHEMA
    )
    write_parquet(table.sort_by([("src", "ascending"), ("dst", "ascending")]), task.out)
    return table.num_rows


def _nearest(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per query, the candidate id with the highest similarity (-1 if none), ties to the smaller id.

    Scores are recomputed pair by pair: search scores of a batch can differ in the last bit with the
    batch's size, which would let chunking pick a different one of two identical copies.
    """
    scores = inner_products_by_id(queries, vectors, ids)
    best = scores.max(axis=1, keepdims=True)
    tied = np.where((scores == best) & (ids >= 0), ids, np.iinfo(np.int64).max).min(axis=1)
    return np.where(tied == np.iinfo(np.int64).max, -1, tied)


def knn_edges(vectors_path: Path, n: int, config: DedupConfig, work_dir: Path, map_fn: MapFn, seed: int) -> Path:
    """Build the index over the `n` saved vectors once, search every chunk as a task, return the
    folder of edge files."""
    edges_dir, nearest_dir = work_dir / ROW_EDGES, work_dir / ROW_NEAREST
    edges_dir.mkdir(parents=True, exist_ok=True)
    nearest_dir.mkdir(exist_ok=True)
    if not n:
        return edges_dir
    index_path = saved_index(vectors_path, config.index, seed)
    tasks = [
        EdgeTask(
            start,
            min(start + config.chunk_size, n),
            str(index_path),
            str(vectors_path),
            str(edges_dir / f"{start:012d}.parquet"),
            str(nearest_dir / f"{start:012d}.parquet"),
            config.k,
            config.threshold,
            config.index,
            config.threads,
        )
        for start in range(0, n, config.chunk_size)
    ]
    run_unfinished(map_fn, search_chunk, tasks)
    return edges_dir


SEMDEDUP_CLUSTER_IMAGES = 10_000
"""Pool images a semdedup cluster holds by default (SemDeDup ran 50,000 clusters over LAION-440M,
8,800 images each). A cluster is compared with itself, so the pool costs N x this many products;
a fixed number of clusters would make it N^2 / clusters (1.2e16 at 1.2B images in 100 clusters)."""

SEMDEDUP_PRODUCTS = 1 << 26
"""Similarities computed at once (256 MB): a block of a cluster's rows against the whole cluster,
as many rows as fit. A cluster's full matrix grows with the square of its size, and a configured
cluster count can leave clusters of millions."""


def semdedup_edges(vectors: np.ndarray, config: DedupConfig, work_dir: Path, seed: int) -> tuple[Path, np.ndarray]:
    """Within-cluster pairs at cosine >= 1 - eps, into edge work files a bounded batch at a time;
    returns their folder and each vector's centroid similarity."""
    clusters = config.semdedup_clusters or math.ceil(len(vectors) / SEMDEDUP_CLUSTER_IMAGES)
    clusters = min(clusters, len(vectors))
    _, assignment, centroid_similarity = spherical_kmeans(vectors, clusters, 20, seed)
    by_cluster = Members.of(assignment, clusters)
    edges = EdgeFiles(work_dir / ROW_EDGES)
    for cluster in range(clusters):
        members = by_cluster[cluster]
        if not len(members):  # k-means leaves clusters empty on pools of near-identical vectors
            continue
        member_vectors = vectors[members]
        block = max(1, SEMDEDUP_PRODUCTS // len(members))
        for start in range(0, len(members), block):
            sims = member_vectors[start : start + block] @ member_vectors.T
            rows, cols = np.nonzero(sims >= 1 - config.semdedup_eps)
            upper = cols > rows + start  # each pair once, never an image with itself
            rows, cols = rows[upper], cols[upper]
            edges.add(members[rows + start], members[cols], sims[rows, cols])
    edges.close()
    return edges.folder, centroid_similarity


class EdgeFiles:
    """Edges (row, row, similarity) written into `folder` as they come, EDGE_FILE_ROWS a file: the
    driver holds one file's worth, not the graph (which `unique_edges` then reads as int64 pairs)."""

    def __init__(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # a killed run's files: this run writes them all again
        folder.mkdir(parents=True)
        self.folder, self.files = folder, 0
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.rows = 0

    def add(self, src: np.ndarray, dst: np.ndarray, similarity: np.ndarray) -> None:
        self.pending.append((src, dst, similarity))
        self.rows += len(src)
        if self.rows >= EDGE_FILE_ROWS:
            self._write()

    def close(self) -> None:
        if self.rows or not self.files:  # an empty graph still has its (empty) file
            self._write()

    def _write(self) -> None:
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        src, dst, similarity = (np.concatenate(column) for column in zip(empty, *self.pending, strict=True))
        table = pa.table({"src": src, "dst": dst, "similarity": similarity.astype(np.float32)}, schema=EDGE_SCHEMA)
        write_parquet(table, self.folder / f"{self.files:012d}.parquet")
        self.pending, self.rows, self.files = [], 0, self.files + 1


def unique_edges(n: int, edges_dir: Path) -> np.ndarray:
    """Every undirected edge of the work files once, sorted, packed as src·n + dst (src < dst).

    The graph can hold tens of edges an image (a picture the web repeats, k of them each), so it
    lives in one int64 array sorted and deduplicated in place: a copy per step would multiply it.
    """
    parts = sorted(edges_dir.glob("*.parquet"))
    pairs = np.empty(sum(pq.read_metadata(part).num_rows for part in parts), np.int64)
    filled = 0
    for part in parts:
        table = pq.read_table(part, columns=["src", "dst"])
        rows = slice(filled, filled + table.num_rows)
        np.multiply(table.column("src").to_numpy(), n, out=pairs[rows])
        pairs[rows] += table.column("dst").to_numpy()
        filled += table.num_rows
    pairs.sort()
    pairs.resize(_drop_repeats(pairs))  # gives the repeats' memory back
    return pairs


def _drop_repeats(ordered: np.ndarray) -> int:
    """Move each distinct value of a sorted array to its front, in place, EDGE_BATCH values at a time;
    returns how many there are."""
    kept = 0
    for start in range(0, len(ordered), EDGE_BATCH):
        block = ordered[start : start + EDGE_BATCH]
        new = np.ones(len(block), bool)
        np.not_equal(block[1:], block[:-1], out=new[1:])
        new[0] = start == 0 or block[0] != ordered[kept - 1]
        distinct = block[new]  # a copy: the write below may overlap the block it came from
        ordered[kept : kept + len(distinct)] = distinct
        kept += len(distinct)
    return kept


EDGE_BATCH = 1 << 20
"""Edges handled at once by the steps after the search: their temporaries take ~100 bytes an edge
of a batch (100 MB), never of the graph."""


def components_of(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label of each of `n` rows, from edges packed as src·n + dst; components
    are numbered in the order of their smallest row, as scipy numbers them.

    A union-find, EDGE_BATCH edges at a time: `parent` points each row at a smaller row of its
    component or at itself (a root, the component's smallest row), and each batch's roots are joined
    by scipy on that batch's small graph (a hub image's many edges join in one step, where pairwise
    linking would take one round per edge). Beyond `parent`, only a batch is held; scipy on the
    whole graph would hold ~25 bytes an edge.
    """
    dtype = np.int32 if n < 2**31 else np.int64
    parent = np.arange(n, dtype=dtype)
    for start in range(0, len(pairs), EDGE_BATCH):
        block = pairs[start : start + EDGE_BATCH]
        ends = _roots(parent, np.stack([block // n, block % n]))
        ends = ends[:, ends[0] != ends[1]]
        if not ends.shape[1]:
            continue
        roots, local = np.unique(ends, return_inverse=True)
        local = local.reshape(ends.shape)
        graph = coo_matrix((np.ones(local.shape[1], np.int8), (local[0], local[1])), shape=(len(roots),) * 2)
        joined = connected_components(graph, directed=False)[1]
        smallest = np.full(joined.max() + 1, n, dtype)
        np.minimum.at(smallest, joined, roots)
        parent[roots] = smallest[joined]
    _flatten(parent)
    is_root = parent == np.arange(n, dtype=dtype)
    number = np.cumsum(is_root, dtype=dtype) - 1
    return number[parent]


def _roots(parent: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The root of each of `rows`; the rows are then pointed straight at it, so later batches climb less."""
    found = parent[rows]
    while not np.array_equal(up := parent[found], found):
        found = up
    parent[rows] = found
    return found


def _flatten(parent: np.ndarray) -> None:
    """Point every row at its root, in place: each pass skips a row to its grandparent, so a chain
    of any length takes a logarithmic number of passes."""
    while not np.array_equal(grand := parent[parent], parent):
        parent[:] = grand


def choose_kept(labels: np.ndarray, by_key: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """Row kept per component: highest `preference`, then smallest key (`by_key`: the rows in key
    order). Returns the kept row of every row, sorted in numpy: a Python sort of a billion rows
    would take hours and a hundred bytes a row."""
    if not len(labels):
        return np.zeros(0, np.int64)
    key_rank = np.empty(len(by_key), np.int64)
    key_rank[by_key] = np.arange(len(by_key))
    order = np.lexsort((key_rank, -preference, labels))
    ordered = labels[order]
    first = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    kept_of_label = np.empty(int(labels.max()) + 1, np.int64)
    kept_of_label[ordered[first]] = order[first]
    return kept_of_label[labels]


def run_dedup(
    config: DedupConfig, ingest_dir: Path, embed_dir: Path, work_dir: Path, map_fn: MapFn, seed: int = 0
) -> dict[str, int]:
    """Deduplicate the pool's `config.role` embeddings into `work_dir`; returns manifest counts.

    Per image the driver holds a key and a few numbers, never a Python object: the vectors stay in
    a memory map, and an IVF index holds codes. Per edge of the graph it holds one int64, as each
    search found it (an edge found from both ends twice, until they are merged)."""
    keys, vectors = embeddings_on_disk(embed_dir / config.role / POOL, work_dir / VECTORS)
    by_key = pc.sort_indices(keys).to_numpy().astype(np.int64)
    pixels = _pixels_by_key(ingest_dir, keys)
    if config.mode == "knn":
        edges_dir = knn_edges(work_dir / VECTORS, len(keys), config, work_dir, map_fn, seed)
        preference = pixels
    else:
        edges_dir, centroid_similarity = semdedup_edges(vectors, config, work_dir, seed)
        preference = -centroid_similarity if config.semdedup_keep == "farthest" else centroid_similarity
    pairs = unique_edges(len(keys), edges_dir)
    labels = components_of(len(keys), pairs)
    kept = choose_kept(labels, by_key, preference)
    _write_outputs(keys, by_key, vectors, labels, kept, work_dir)
    _write_edges(keys, vectors, pairs, work_dir / "edges")
    shutil.rmtree(edges_dir)
    if config.mode == "knn":
        _write_nearest(keys, by_key, vectors, work_dir / ROW_NEAREST, work_dir / "nearest.parquet")
    for scratch in (VECTORS, "index.faiss"):
        (work_dir / scratch).unlink(missing_ok=True)
    is_removed = kept != np.arange(len(keys))
    return {
        "images": len(keys),
        "kept": len(keys) - int(is_removed.sum()),
        "removed": int(is_removed.sum()),
        "components_with_duplicates": len(np.unique(labels[is_removed])),
    }


def _pixels_by_key(ingest_dir: Path, keys: pa.Array) -> np.ndarray:
    """Width × height of each of `keys`, from the ingest index, joined in Arrow."""
    index = pq.read_table(ingest_dir / "index.parquet", columns=["key", "width", "height"])
    at = pc.index_in(keys, value_set=index["key"].combine_chunks().cast(keys.type))
    if at.null_count:
        raise StageError(
            f"{at.null_count} embedded images are not in the ingest index; re-run from ingest (--from ingest)"
        )
    pixels = pc.multiply(index["width"].cast(pa.int64()), index["height"].cast(pa.int64())).to_numpy()
    return pixels[at.to_numpy()]


def _write_outputs(
    keys: pa.Array, by_key: np.ndarray, vectors: np.ndarray, labels: np.ndarray, kept: np.ndarray, work_dir: Path
) -> None:
    """keep/removed tables, sorted by key."""
    sizes = np.bincount(labels)
    is_kept = kept[by_key] == by_key
    kept_rows, removed_rows = by_key[is_kept], by_key[~is_kept]
    keep = pa.table(
        {
            "key": keys_at(keys, kept_rows),
            "component": labels[kept_rows],
            "component_size": sizes[labels[kept_rows]],
        }
    )
    removed = pa.table(
        {
            "key": keys_at(keys, removed_rows),
            "component": labels[removed_rows],
            "kept_key": keys_at(keys, kept[removed_rows]),
            "similarity": pair_similarity(vectors, removed_rows, kept[removed_rows]),
        }
    )
    pq.write_table(keep, work_dir / "keep.parquet")
    pq.write_table(removed, work_dir / "removed.parquet")


EDGE_FILE_ROWS = 1_000_000


def _write_edges(keys: pa.Array, vectors: np.ndarray, pairs: np.ndarray, out_dir: Path) -> None:
    """edges/part-NNNNN.parquet: keys and exact similarity of each edge, EDGE_FILE_ROWS per file."""
    out_dir.mkdir(exist_ok=True)
    for part, start in enumerate(range(0, max(len(pairs), 1), EDGE_FILE_ROWS)):
        block = pairs[start : start + EDGE_FILE_ROWS]
        a, b = block // len(keys), block % len(keys)
        table = pa.table(
            {
                "src_key": keys_at(keys, a),
                "dst_key": keys_at(keys, b),
                "similarity": pair_similarity(vectors, a, b),
            }
        )
        pq.write_table(table, out_dir / f"part-{part:05d}.parquet")


def _write_nearest(keys: pa.Array, by_key: np.ndarray, vectors: np.ndarray, nearest_dir: Path, out: Path) -> None:
    """nearest.parquet sorted by key; similarity recomputed from the vectors, so chunking cannot change it."""
    nearest = np.full(len(keys), -1, np.int64)
    for part in sorted(nearest_dir.glob("*.parquet")):
        table = pq.read_table(part)
        nearest[table.column("row").to_numpy()] = table.column("nearest").to_numpy()
    nearest = nearest[by_key]
    found = nearest >= 0
    similarity = np.full(len(keys), np.nan, np.float32)
    similarity[found] = pair_similarity(vectors, by_key[found], nearest[found])
    named = pa.table(
        {
            "key": keys_at(keys, by_key),
            "nearest_key": pc.if_else(pa.array(found), keys_at(keys, np.maximum(nearest, 0)), None),
            "similarity": pa.array(similarity, pa.float32(), mask=~found),
        }
    )
    pq.write_table(named, out)
    shutil.rmtree(nearest_dir)


def summary_line(counts: dict[str, int]) -> str:
    return (
        f"dedup: {counts['images']} images -> {counts['kept']} kept + {counts['removed']} duplicates "
        f"in {counts['components_with_duplicates']} groups"
    )
