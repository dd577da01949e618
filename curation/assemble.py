"""Assemble stage: the curated set as shuffled WebDataset shards with lineage, plus a parquet index.

    RUN/curated/{shard:06d}.tar   {key}.jpg + {key}.json (key, collection, source, lineage: [
                                  {seed_set, strategy, query_key, similarity}, ...])
    RUN/curated/index.parquet     key, collection, shard, source, sha256, seed_sets, strategies

An image retrieved by several rows is stored once and carries every lineage entry. The order is a
global shuffle with a fixed seed, so shards can be read in order by a trainer. The counts tie
every pool input to exactly one fate: curated, not retrieved, contaminated, duplicate or
quarantined, and they must add up to the ingest's inputs (checked; a mismatch stops the run).

The driver plans in Arrow columns, not Python objects (at the paper's 142M samples, a few
hundred bytes of Python each would be tens of GB): it groups the rows' selections into one
lineage list per image, shuffles, joins the ingest indexes, which say where each JPEG lies
(shard, byte offset, size), and writes the plan with one row group per output shard. Each output
shard is then one task on the stage's executor (local processes or Ray tasks) that reads its row
group and its images at those offsets, so the stage reads each curated image once however many
shards it writes, and a killed stage keeps the shards it finished. (A shuffle that scanned every
ingest shard touching an output shard would read the whole pool once per output shard.)

Each image's sha256 is checked against the one ingest recorded before it is copied, so bytes that
changed on storage since ingest stop the stage instead of entering the curated set, and the curated
index records it, so the curated shards can be verified without the run that made them.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curation.ingest import INDEX_SCHEMA as INGEST_SCHEMA
from curation.ingest import POOL, collection_dir
from curation.shards import ShardWriter, read_each_at
from foundation.config import Section
from foundation.errors import CorruptInput, StageError
from foundation.executors import MapFn, run_unfinished
from foundation.files import atomic_path

STAGE = "curated"  # the stage is named for what it leaves: RUN/curated/
PLAN = "plan.parquet"  # in the stage's work folder while it runs; removed when the index is written
LINEAGE = ["seed_set", "strategy", "query_key", "similarity"]
STORED = ["shard", "offset", "bytes", "source", "sha256"]  # what ingest recorded of an image, and where
COLUMNS = ["key", *STORED]
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("collection", pa.string()),
        ("shard", pa.int32()),
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("seed_sets", pa.list_(pa.string())),
        ("strategies", pa.list_(pa.string())),
    ]
)
INDEX_LAYOUT = "sha256"
"""Hashed into the stage, so a curated index from before it recorded each image's sha256 is rebuilt."""


class AssembleConfig(Section):
    execution_fields: ClassVar[frozenset[str]] = frozenset({"workers"})

    shard_size: int = Field(1000, ge=1, description="samples per curated shard")
    workers: int = Field(2, ge=1, description="shards written at once on the local machine")


@dataclass(frozen=True)
class ShardTask:
    out: str  # the curated shard this task writes (atomically, so its presence means done)
    plan: str  # the plan's parquet file; row group `shard` holds this shard's samples in order
    shard: int
    ingest_dir: str


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
    `rows` maps each retrieval row to its strategy; `progress` is called with each finished shard's
    sample count."""
    plan_path = work_dir / PLAN
    if not plan_path.exists():  # deterministic: a re-run after a kill may reuse it
        write_plan(plan(ingest_dir, retrieve_dir, rows, seed), plan_path, config.shard_size)
    shards = pq.ParquetFile(plan_path).num_row_groups
    tasks = [ShardTask(str(work_dir / f"{i:06d}.tar"), str(plan_path), i, str(ingest_dir)) for i in range(shards)]
    run_unfinished(map_fn, write_shard, tasks, progress)
    collections = write_index(plan_path, work_dir / "index.parquet")
    plan_path.unlink()
    return {
        "curated": sum(collections.values()),
        "curated.pool": collections.get(POOL, 0),
        "curated.seed_images": sum(n for c, n in collections.items() if c != POOL),
        "shards": shards,
    }


def write_plan(table: pa.Table, path: Path, shard_size: int) -> None:
    """The plan with one row group per output shard (none when nothing was selected)."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, table.schema) as writer:
        for start in range(0, table.num_rows, shard_size):
            writer.write_table(table.slice(start, shard_size), row_group_size=shard_size)


def selections(retrieve_dir: Path, rows: dict[str, str]) -> pa.Table:
    """Every row's selected images (collection, key) with their lineage entries, rows in `rows`' order."""
    parts = []
    for row, strategy in rows.items():
        part = pq.read_table(
            retrieve_dir / row / "selected.parquet", columns=["collection", "key", "query_key", "similarity"]
        )
        part = part.append_column("seed_set", pa.array([row] * part.num_rows, pa.string()))
        parts.append(part.append_column("strategy", pa.array([strategy] * part.num_rows, pa.string())))
    return pa.concat_tables(parts)


def plan(ingest_dir: Path, retrieve_dir: Path, rows: dict[str, str], seed: int) -> pa.Table:
    """One row per curated image in output order: key, collection, where ingest stored it, and its
    lineage (a list of every selection of it, in the rows' order)."""
    selected = selections(retrieve_dir, rows)
    selected = selected.append_column("position", pa.array(np.arange(selected.num_rows)))
    by_member = [("collection", "ascending"), ("key", "ascending"), ("position", "ascending")]
    selected = selected.take(pc.sort_indices(selected, by_member)).combine_chunks()
    member = member_names(selected).combine_chunks()
    firsts = np.flatnonzero(np.r_[True, pc.not_equal(member[1:], member[:-1]).to_numpy(zero_copy_only=False)])
    firsts = firsts[firsts < selected.num_rows]  # no selections: no members
    lineage = pa.ListArray.from_arrays(
        pa.array(np.r_[firsts, selected.num_rows], pa.int32()),
        pa.StructArray.from_arrays([selected[name].combine_chunks() for name in LINEAGE], LINEAGE),
    )
    members = pa.table(
        {"key": selected["key"].take(firsts), "collection": selected["collection"].take(firsts), "lineage": lineage}
    )
    members = members.take(np.random.default_rng(seed).permutation(members.num_rows))
    stored = locate(ingest_dir, members.select(["collection", "key"]))
    return pa.table(
        {
            **{n: members[n] for n in ("key", "collection")},
            **{n: stored[n] for n in STORED},
            "lineage": members["lineage"],
        }
    )


def locate(ingest_dir: Path, members: pa.Table) -> pa.Table:
    """Where ingest stored each of `members` (collection, key), row for row: key, shard, offset,
    bytes, source and collection.

    Each collection's index is streamed and only the members' rows are kept: the pool's index has
    a row for every crawled image, of which a curated set is a few percent. `is_in` hashes the
    members' keys again for every batch, so a batch holds at least as many rows as there are
    members; pre-buffering is off because it keeps every column chunk read until the file closes.
    """
    found, schema = [], pa.schema([INGEST_SCHEMA.field(name) for name in COLUMNS])
    for collection in pc.unique(members["collection"]).to_pylist():
        path = collection_dir(ingest_dir, collection) / "index.parquet"
        index = pq.ParquetFile(path, pre_buffer=False)
        if "offset" not in index.schema_arrow.names:
            raise StageError(
                f"{path} has no offset column: it was ingested before images were read by offset; "
                "re-run from ingest (--from ingest)"
            )
        wanted = members.filter(pc.equal(members["collection"], collection))["key"].combine_chunks()
        batches = index.iter_batches(max(1 << 20, len(wanted)), columns=COLUMNS)
        rows = pa.Table.from_batches((b.filter(pc.is_in(b["key"], value_set=wanted)) for b in batches), schema)
        found.append(rows.append_column("collection", pa.array([collection] * rows.num_rows, pa.string())))
    if not found:
        return schema.append(pa.field("collection", pa.string())).empty_table()
    found = pa.concat_tables(found)
    at = pc.index_in(member_names(members), value_set=member_names(found).combine_chunks())
    if at.null_count:
        absent = members.filter(pc.is_null(at))
        raise StageError(
            f"{absent.num_rows} selected images are not in their collection's ingest index (first: "
            f"{absent['collection'][0]}/{absent['key'][0]}); re-run from ingest (--from ingest)"
        )
    return found.take(at)


def member_names(table: pa.Table) -> pa.ChunkedArray:
    """`collection/key` for each row: one string per image (keys are hex, so it is unambiguous)."""
    return pc.binary_join_element_wise(table["collection"], table["key"], "/")


def write_shard(task: ShardTask) -> int:
    """One curated shard: its samples from the plan, their images read at their ingest offsets."""
    samples = pq.ParquetFile(task.plan).read_row_group(task.shard).to_pylist()
    images = read_images(Path(task.ingest_dir), samples)
    for sample, jpeg in zip(samples, images, strict=True):
        require_recorded_hash(Path(task.ingest_dir), sample, jpeg)
    with ShardWriter(task.out) as writer:
        for sample, jpeg in zip(samples, images, strict=True):
            lineage = [entry | {"similarity": round(float(entry["similarity"]), 6)} for entry in sample["lineage"]]
            meta = {
                "key": sample["key"],
                "collection": sample["collection"],
                "source": sample["source"],
                "lineage": lineage,
            }
            writer.write(sample["key"], {"jpg": jpeg, "json": meta})
    return len(samples)


def require_recorded_hash(ingest_dir: Path, stored: dict, jpeg: bytes) -> None:
    """Raise CorruptInput unless `jpeg` has the sha256 ingest recorded for it: a same-size change
    on storage (bit rot, a bad copy) passes the tar header check, and would otherwise be copied."""
    found = hashlib.sha256(jpeg).hexdigest()
    if found != stored["sha256"]:
        tar = collection_dir(ingest_dir, stored["collection"]) / f"{stored['shard']:06d}.tar"
        raise CorruptInput(
            f"{tar}: {stored['key']}.jpg has sha256 {found[:16]}…, not the {stored['sha256'][:16]}… ingest "
            "recorded; the shard changed after ingest wrote it (`lvd verify RUN` names every damaged shard): "
            "re-run from ingest (--from ingest)"
        )


def write_index(plan_path: Path, path: Path) -> dict[str, int]:
    """The curated index from the plan, a row group (an output shard) at a time; returns the
    number of samples per collection."""
    counts: dict[str, int] = defaultdict(int)
    plan_file = pq.ParquetFile(plan_path)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, INDEX_SCHEMA) as writer:
        for shard in range(plan_file.num_row_groups):
            rows = plan_file.read_row_group(shard, columns=["key", "collection", "source", "sha256", "lineage"])
            rows = rows.to_pylist()
            for row in rows:
                counts[row["collection"]] += 1
                row |= {
                    "shard": shard,
                    "seed_sets": sorted({e["seed_set"] for e in row["lineage"]}),
                    "strategies": sorted({e["strategy"] for e in row["lineage"]}),
                }
            writer.write_table(pa.Table.from_pylist(rows, INDEX_SCHEMA))
    return dict(counts)


def read_images(ingest_dir: Path, stored: list[dict]) -> list[bytes]:
    """The JPEG bytes of ingested images, in order: `stored` holds each one's collection, key,
    shard, offset and bytes (as `locate` gives them); each ingest tar is read once, at the offsets."""
    return read_each_at(
        [
            (
                collection_dir(ingest_dir, row["collection"]) / f"{row['shard']:06d}.tar",
                f"{row['key']}.jpg",
                row["offset"],
                row["bytes"],
            )
            for row in stored
        ]
    )


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
