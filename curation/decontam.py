"""Decontamination: relative dedup of the pool against evaluation sets (DINOv2 App. A.3).

Every evaluation image (train and test splits of every benchmark named in the config) is searched
against the whole pool; each pool image within `threshold` cosine of one marks its whole dedup
component as contaminated, and the component's kept image leaves the pool. The paper uses 0.45
with SSCD copy-detection embeddings; thresholds are specific to the embedder.

    RUN/decontam/keep.parquet      key                                                 (sorted)
    RUN/decontam/removed.parquet   key, component, eval_set, eval_key, via_key, similarity
                                   (the closest eval image to any image of the component)
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curation.embed import embeddings_on_disk, read_embeddings
from curation.ingest import POOL
from curation.knn import IndexSpec, build_index, neighbours_above, on_device
from foundation.config import Section
from foundation.errors import StageError
from foundation.storage import ConfigPath

STAGE = "decontam"
DEDUP_TABLES = ("keep.parquet", "removed.parquet")  # every deduplicated image is in one of them
VECTORS = "vectors.npy"  # work file: the pool's vectors, memory-mapped


class EvalSet(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: ConfigPath = Field(description="the evaluation images (train and test splits): a folder or tar shards")


class DecontamConfig(Section):
    eval_sets: list[EvalSet] = Field(default_factory=list)
    role: str = Field("copy", description="which embed role to compare in")
    threshold: float = Field(
        0.45, gt=-1, le=1, description="pool images at cosine >= this to an eval image are dropped"
    )
    k: int = Field(64, ge=1, description="pool neighbours searched per eval image")
    index: IndexSpec = IndexSpec()


def run_decontam(
    config: DecontamConfig, embed_dir: Path, dedup_dir: Path, work_dir: Path, seed: int = 0
) -> dict[str, int]:
    """Drop every dedup component that holds a pool image close to an eval image; returns manifest counts.

    The pool's vectors stay in a memory map (a scratch file, removed at the end): the process holds
    the index, and per image a key and its component."""
    keys, vectors = embeddings_on_disk(embed_dir / config.role / POOL, work_dir / VECTORS)
    kept = pq.read_table(dedup_dir / "keep.parquet", columns=["key", "component"])
    component = components_of_rows(dedup_dir, keys)
    index = on_device(build_index(vectors, config.index, seed), config.index) if len(keys) else None
    hits = pa.concat_tables(
        [HITS_SCHEMA.empty_table()]
        + [_hits(index, config, vectors, eval_set, embed_dir, component) for eval_set in config.eval_sets]
    )
    closest = _closest_per_component(hits)
    kept_at = pc.index_in(closest["component"], value_set=kept["component"].combine_chunks())
    removed = pa.table(
        {
            "key": kept["key"].take(kept_at).cast(pa.string()),
            "component": closest["component"],
            "eval_set": closest["eval_set"],
            "eval_key": closest["eval_key"],
            "via_key": keys.take(closest["via_row"]).cast(pa.string()),
            "similarity": closest["similarity"],
        }
    ).sort_by("key")
    keep = kept.filter(pc.invert(pc.is_in(kept["component"], value_set=closest["component"])))
    keep = keep.select(["key"]).sort_by("key")
    (work_dir / VECTORS).unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(keep, work_dir / "keep.parquet")
    pq.write_table(removed, work_dir / "removed.parquet")
    return {"images": kept.num_rows, "kept": keep.num_rows, "removed": removed.num_rows}


HITS_SCHEMA = pa.schema(
    [
        ("component", pa.int64()),
        ("similarity", pa.float32()),
        ("eval_set", pa.string()),
        ("eval_key", pa.string()),
        ("via_row", pa.int64()),
    ]
)


def _hits(
    index: faiss.Index | None,
    config: DecontamConfig,
    vectors: np.ndarray,
    eval_set: EvalSet,
    embed_dir: Path,
    component: np.ndarray,
) -> pa.Table:
    """Every (pool image, image of `eval_set`) pair within the threshold, as Arrow columns: at a
    billion images there are hundreds of millions, too many for Python objects."""
    eval_keys, eval_vectors = read_embeddings(embed_dir / config.role / "eval" / eval_set.name)
    if index is None or not eval_keys:
        return HITS_SCHEMA.empty_table()
    rows, pool_rows, sims = neighbours_above(index, config.index, vectors, eval_vectors, config.k, config.threshold)
    columns = {
        "component": component[pool_rows],
        "similarity": sims,
        "eval_set": pa.repeat(pa.scalar(eval_set.name, pa.string()), len(rows)),
        "eval_key": pa.array(eval_keys, pa.string()).take(rows),
        "via_row": pool_rows,
    }
    return pa.table(columns, schema=HITS_SCHEMA)


def _closest_per_component(hits: pa.Table) -> pa.Table:
    """Per hit component, in component order, its most similar hit; of equals, the first found (eval
    sets in config order, then each eval image's neighbours in rank order)."""
    component = hits["component"].to_numpy()
    order = np.lexsort((np.arange(len(component)), -hits["similarity"].to_numpy(), component))
    first = np.ones(len(order), bool)
    first[1:] = component[order[1:]] != component[order[:-1]]
    return hits.take(order[first])


def components_of_rows(dedup_dir: Path, keys: pa.Array) -> np.ndarray:
    """The dedup component of each of `keys` (kept or removed there), joined in Arrow: a dict of
    the whole pool's keys would cost more than its vectors' key list."""
    kept, removed = (pq.read_table(dedup_dir / name, columns=["key", "component"]) for name in DEDUP_TABLES)
    known = pa.concat_tables([kept, removed.cast(kept.schema)])
    at = pc.index_in(keys, value_set=known["key"].combine_chunks().cast(keys.type))
    if at.null_count:
        raise StageError(f"{at.null_count} embedded pool images are not in the dedup stage's tables; re-run from dedup")
    return known["component"].combine_chunks().to_numpy()[at.to_numpy()]


def summary_line(counts: dict[str, int]) -> str:
    return f"decontam: {counts['images']} images -> {counts['kept']} kept + {counts['removed']} contaminated"
