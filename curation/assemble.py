"""Assemble stage: the curated set as shuffled WebDataset shards with lineage, plus a parquet index.

    RUN/curated/{shard:06d}.tar   {key}.jpg + {key}.json (key, collection, source, lineage: [
                                  {seed_set, strategy, query_key, similarity}, ...])
    RUN/curated/index.parquet     key, collection, shard, source, seed_sets, strategies

An image retrieved by several rows is stored once and carries every lineage entry. The order is a
global shuffle with a fixed seed, so shards can be read in order by a trainer. The counts tie
every pool input to exactly one fate: curated, not retrieved, contaminated, duplicate or
quarantined, and they must add up to the ingest's inputs (checked; a mismatch stops the run).

Images are gathered per output shard from the ingest shards that hold them; that reads each
ingest shard once per output shard touching it, fine up to a few hundred shards (a bucketed
two-pass shuffle is the way past that).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from curation.ingest import POOL, collection_dir
from curation.shards import ShardWriter, read_members
from foundation.config import Section
from foundation.errors import StageError

STAGE = "curated"  # the stage is named for what it leaves: RUN/curated/


class AssembleConfig(Section):
    shard_size: int = Field(1000, ge=1, description="samples per curated shard")


def gather_lineage(retrieve_dir: Path, rows: dict[str, str]) -> dict[tuple[str, str], list[dict]]:
    """(collection, key) -> lineage entries from every row's selection; `rows` maps row -> strategy."""
    lineage: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row, strategy in rows.items():
        for sel in pq.read_table(retrieve_dir / row / "selected.parquet").to_pylist():
            lineage[(sel["collection"], sel["key"])].append(
                {
                    "seed_set": row,
                    "strategy": strategy,
                    "query_key": sel["query_key"],
                    "similarity": round(float(sel["similarity"]), 6),
                }
            )
    return lineage


def run_assemble(
    config: AssembleConfig, ingest_dir: Path, retrieve_dir: Path, rows: dict[str, str], work_dir: Path, seed: int = 0
) -> dict[str, int]:
    """Write the curated shards and index into `work_dir`; returns counts (with the pool's accounting)."""
    lineage = gather_lineage(retrieve_dir, rows)
    order = sorted(lineage)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    facts = ingest_facts(ingest_dir, {collection for collection, _ in order})
    index_rows = []
    for shard, start in enumerate(range(0, len(order), config.shard_size)):
        members = order[start : start + config.shard_size]
        images = read_images(ingest_dir, members, facts)
        with ShardWriter(work_dir / f"{shard:06d}.tar") as writer:
            for collection, key in members:
                source = facts[(collection, key)]["source"]
                meta = {"key": key, "collection": collection, "source": source, "lineage": lineage[(collection, key)]}
                writer.write(key, {"jpg": images[(collection, key)], "json": meta})
                index_rows.append(
                    {
                        "key": key,
                        "collection": collection,
                        "shard": shard,
                        "source": source,
                        "seed_sets": sorted({e["seed_set"] for e in meta["lineage"]}),
                        "strategies": sorted({e["strategy"] for e in meta["lineage"]}),
                    }
                )
    pq.write_table(
        pa.Table.from_pylist(
            index_rows,
            schema=pa.schema(
                [
                    ("key", pa.string()),
                    ("collection", pa.string()),
                    ("shard", pa.int32()),
                    ("source", pa.string()),
                    ("seed_sets", pa.list_(pa.string())),
                    ("strategies", pa.list_(pa.string())),
                ]
            ),
        ),
        work_dir / "index.parquet",
    )
    curated_pool = sum(collection == POOL for collection, _ in order)
    return {
        "curated": len(order),
        "curated.pool": curated_pool,
        "curated.seed_images": len(order) - curated_pool,
        "shards": -(-len(order) // config.shard_size) if order else 0,
    }


def ingest_facts(ingest_dir: Path, collections: set[str]) -> dict[tuple[str, str], dict]:
    """(collection, key) -> the ingest index's key, shard and source, for every image of `collections`."""
    facts = {}
    for collection in collections:
        for row in pq.read_table(
            collection_dir(ingest_dir, collection) / "index.parquet", columns=["key", "shard", "source"]
        ).to_pylist():
            facts[(collection, row["key"])] = row
    return facts


def read_images(
    ingest_dir: Path, members: list[tuple[str, str]], facts: dict | None = None
) -> dict[tuple[str, str], bytes]:
    """The ingested JPEG bytes of `members` ((collection, key) pairs), reading each tar once."""
    facts = facts or ingest_facts(ingest_dir, {collection for collection, _ in members})
    wanted: dict[Path, dict[str, tuple[str, str]]] = defaultdict(dict)
    for collection, key in members:
        tar = collection_dir(ingest_dir, collection) / f"{facts[(collection, key)]['shard']:06d}.tar"
        wanted[tar][f"{key}.jpg"] = (collection, key)
    images = {}
    for tar, names in sorted(wanted.items()):
        found = read_members(tar, set(names))
        for name, member in names.items():
            images[member] = found[name]
    return images


def account(ingest_counts: dict, dedup_counts: dict, decontam_counts: dict, curated_pool: int) -> dict[str, int]:
    """Every pool input in exactly one bucket; raises StageError when the buckets do not add up."""
    buckets = {
        "quarantined": ingest_counts["quarantined"],
        "duplicate": dedup_counts["removed"],
        "contaminated": decontam_counts["removed"],
        "curated": curated_pool,
        "not_retrieved": decontam_counts["kept"] - curated_pool,
    }
    if sum(buckets.values()) != ingest_counts["inputs"] or buckets["not_retrieved"] < 0:
        raise StageError(f"pool accounting does not add up: {json.dumps(buckets)} vs {ingest_counts['inputs']} inputs")
    return {f"pool.{name}": n for name, n in buckets.items()}


def summary_line(counts: dict[str, int]) -> str:
    fates = ", ".join(f"{k.removeprefix('pool.')} {v}" for k, v in counts.items() if k.startswith("pool."))
    return (
        f"assemble: {counts['curated']} curated images ({counts['curated.pool']} from the pool, "
        f"{counts['curated.seed_images']} seed images) in {counts['shards']} shards; pool inputs: {fates}"
    )
