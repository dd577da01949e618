"""Assemble stage: the curated set as shuffled WebDataset shards with lineage, plus a parquet index.

    RUN/curated/{shard:06d}.tar   {key}.jpg + {key}.json (key, collection, source, lineage: [
                                  {seed_set, strategy, query_key, similarity}, ...])
    RUN/curated/index.parquet     key, collection, shard, source, seed_sets, strategies

An image retrieved by several rows is stored once and carries every lineage entry. The order is a
global shuffle with a fixed seed, so shards can be read in order by a trainer. The counts tie
every pool input to exactly one fate: curated, not retrieved, contaminated, duplicate or
quarantined, and they must add up to the ingest's inputs (checked; a mismatch stops the run).

The driver plans: it joins the retrieved keys with the ingest indexes, which say where each JPEG
lies (shard, byte offset, size), and writes the parquet index. Each output shard is then one task
on the stage's executor (local processes or Ray tasks) that reads its images at those offsets, so
the stage reads each curated image once however many shards it writes, and a killed stage keeps
the shards it finished. A shuffle that scanned every ingest shard touching an output shard would
read the whole pool once per output shard.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curation.ingest import POOL, collection_dir
from curation.shards import ShardWriter, read_at
from foundation.config import Section
from foundation.errors import StageError
from foundation.executors import MapFn, run_unfinished

STAGE = "curated"  # the stage is named for what it leaves: RUN/curated/
Member = tuple[str, str]  # (collection, key)
STORED = ["key", "shard", "offset", "bytes", "source"]  # the ingest index columns that locate an image
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("collection", pa.string()),
        ("shard", pa.int32()),
        ("source", pa.string()),
        ("seed_sets", pa.list_(pa.string())),
        ("strategies", pa.list_(pa.string())),
    ]
)


class AssembleConfig(Section):
    execution_fields: ClassVar[frozenset[str]] = frozenset({"workers"})

    shard_size: int = Field(1000, ge=1, description="samples per curated shard")
    workers: int = Field(2, ge=1, description="shards written at once on the local machine")


@dataclass(frozen=True)
class Sample:
    """One image: where ingest stored its JPEG (`size` bytes at `offset` in `tar`), and for a
    curated sample the json written beside it."""

    key: str
    tar: str
    offset: int
    size: int
    meta: dict[str, Any] | None = None  # key, collection, source, lineage


@dataclass(frozen=True)
class ShardTask:
    out: str  # the curated shard this task writes (atomically, so its presence means done)
    samples: tuple[Sample, ...]


def gather_lineage(retrieve_dir: Path, rows: dict[str, str]) -> dict[Member, list[dict]]:
    """(collection, key) -> lineage entries from every row's selection; `rows` maps row -> strategy."""
    lineage: dict[Member, list[dict]] = defaultdict(list)
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
    config: AssembleConfig,
    ingest_dir: Path,
    retrieve_dir: Path,
    rows: dict[str, str],
    work_dir: Path,
    map_fn: MapFn,
    progress: Callable[[int], object] = lambda _: None,
    seed: int = 0,
) -> dict[str, int]:
    """Write the curated shards and index into `work_dir`; returns counts (with the pool's accounting).
    `progress` is called with each finished shard's sample count."""
    lineage = gather_lineage(retrieve_dir, rows)
    order = sorted(lineage)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    stored = locate(ingest_dir, order)
    tasks = [
        ShardTask(
            str(work_dir / f"{shard:06d}.tar"),
            tuple(
                curated_sample(ingest_dir, m, stored[m], lineage[m]) for m in order[start : start + config.shard_size]
            ),
        )
        for shard, start in enumerate(range(0, len(order), config.shard_size))
    ]
    run_unfinished(map_fn, write_shard, tasks, progress)
    write_index(tasks, work_dir / "index.parquet")
    curated_pool = sum(collection == POOL for collection, _ in order)
    return {
        "curated": len(order),
        "curated.pool": curated_pool,
        "curated.seed_images": len(order) - curated_pool,
        "shards": len(tasks),
    }


def curated_sample(ingest_dir: Path, member: Member, row: dict, lineage: list[dict]) -> Sample:
    collection, key = member
    meta = {"key": key, "collection": collection, "source": row["source"], "lineage": lineage}
    return stored_sample(ingest_dir, collection, row, meta)


def write_shard(task: ShardTask) -> int:
    """One curated shard: its images read from the ingest tars at their offsets, in the task's order."""
    with ShardWriter(task.out) as writer:
        for sample, jpeg in zip(task.samples, read_samples(task.samples), strict=True):
            writer.write(sample.key, {"jpg": jpeg, "json": sample.meta})
    return len(task.samples)


def write_index(tasks: list[ShardTask], path: Path) -> None:
    index_rows = [
        {
            "key": sample.meta["key"],
            "collection": sample.meta["collection"],
            "shard": shard,
            "source": sample.meta["source"],
            "seed_sets": sorted({e["seed_set"] for e in sample.meta["lineage"]}),
            "strategies": sorted({e["strategy"] for e in sample.meta["lineage"]}),
        }
        for shard, task in enumerate(tasks)
        for sample in task.samples
    ]
    pq.write_table(pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA), path)


def locate(ingest_dir: Path, members: Iterable[Member]) -> dict[Member, dict]:
    """(collection, key) -> the ingest index's key, shard, offset, bytes and source of each member.

    Each collection's index is streamed in batches and only the members' rows are kept: the pool's
    index has a row for every crawled image, of which a curated set is a few percent.
    """
    wanted: dict[str, set[str]] = defaultdict(set)
    for collection, key in members:
        wanted[collection].add(key)
    found: dict[Member, dict] = {}
    for collection, keys in sorted(wanted.items()):
        path = collection_dir(ingest_dir, collection) / "index.parquet"
        index = pq.ParquetFile(path)
        if "offset" not in index.schema_arrow.names:
            raise StageError(
                f"{path} has no offset column: it was ingested before images were read by offset; "
                "re-run from ingest (--from ingest)"
            )
        value_set = pa.array(sorted(keys), pa.string())
        rows = [
            row
            for batch in index.iter_batches(columns=STORED)
            for row in batch.filter(pc.is_in(batch["key"], value_set=value_set)).to_pylist()
        ]
        if len(rows) < len(keys):
            absent = sorted(keys - {row["key"] for row in rows})
            raise StageError(
                f"{len(absent)} selected images are not in {path} (first: {absent[0]}); re-run from ingest"
            )
        found.update(((collection, row["key"]), row) for row in rows)
    return found


def stored_sample(ingest_dir: Path, collection: str, row: dict, meta: dict[str, Any] | None = None) -> Sample:
    """The Sample for an ingest index row (as `locate` returns it) of `collection`."""
    tar = collection_dir(ingest_dir, collection) / f"{row['shard']:06d}.tar"
    return Sample(row["key"], str(tar), row["offset"], row["bytes"], meta)


def read_samples(samples: Iterable[Sample]) -> list[bytes]:
    """Each sample's JPEG bytes, in order, reading each ingest tar once, at the samples' offsets."""
    samples = list(samples)
    by_tar: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for sample in samples:
        by_tar[sample.tar][f"{sample.key}.jpg"] = (sample.offset, sample.size)
    found = {tar: read_at(tar, named) for tar, named in sorted(by_tar.items())}
    return [found[sample.tar][f"{sample.key}.jpg"] for sample in samples]


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
