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

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from curation.embed import read_embeddings
from curation.ingest import POOL
from curation.knn import IndexSpec, build_index, neighbours_above, on_device
from foundation.config import Section
from foundation.storage import ConfigPath

STAGE = "decontam"


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
    """Drop every dedup component that holds a pool image close to an eval image; returns manifest counts."""
    keys, vectors = read_embeddings(embed_dir / config.role / POOL)
    component = component_of(dedup_dir)
    kept_of_component = {c: k for k, c in zip(*_columns(dedup_dir / "keep.parquet", "key", "component"), strict=True)}
    index = on_device(build_index(vectors, config.index, seed), config.index) if keys else None
    closest: dict[int, tuple[float, str, str, str]] = {}
    for eval_set in config.eval_sets:
        eval_keys, eval_vectors = read_embeddings(embed_dir / config.role / "eval" / eval_set.name)
        if index is None or not eval_keys:
            continue
        rows, ids, sims = neighbours_above(index, config.index, vectors, eval_vectors, config.k, config.threshold)
        for row, pool_row, sim in zip(rows, ids, sims, strict=True):
            hit_component = component[keys[pool_row]]
            best = closest.get(hit_component)
            if best is None or sim > best[0]:
                closest[hit_component] = (float(sim), eval_set.name, eval_keys[row], keys[pool_row])
    removed = sorted((kept_of_component[c], c, *hit) for c, hit in closest.items())
    removed_keys = {r[0] for r in removed}
    keep = sorted(k for k in kept_of_component.values() if k not in removed_keys)
    work_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"key": pa.array(keep, pa.string())}), work_dir / "keep.parquet")
    pq.write_table(
        pa.table(
            {
                "key": pa.array([r[0] for r in removed], pa.string()),
                "component": pa.array([r[1] for r in removed], pa.int64()),
                "eval_set": pa.array([r[3] for r in removed], pa.string()),
                "eval_key": pa.array([r[4] for r in removed], pa.string()),
                "via_key": pa.array([r[5] for r in removed], pa.string()),
                "similarity": pa.array([r[2] for r in removed], pa.float32()),
            }
        ),
        work_dir / "removed.parquet",
    )
    return {"images": len(kept_of_component), "kept": len(keep), "removed": len(removed)}


def _columns(path: Path, *names: str) -> list[list]:
    table = pq.read_table(path, columns=list(names))
    return [table.column(n).to_pylist() for n in names]


def component_of(dedup_dir: Path) -> dict[str, int]:
    """Every deduplicated image's component, kept or removed."""
    keep_keys, keep_components = _columns(dedup_dir / "keep.parquet", "key", "component")
    removed_keys, removed_components = _columns(dedup_dir / "removed.parquet", "key", "component")
    return dict(zip(keep_keys + removed_keys, keep_components + removed_components, strict=True))


def summary_line(counts: dict[str, int]) -> str:
    return f"decontam: {counts['images']} images -> {counts['kept']} kept + {counts['removed']} contaminated"
