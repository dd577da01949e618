"""`lvd verify RUN`: every image a run stored, read back and hashed against what ingest recorded.

Ingest records each JPEG's sha256 in its collection's `index.parquet`, and the curated index
records it again for the same bytes. Storage can change a file after it is written (a partial
copy, bit rot, a zeroed block): embed then stops at the first damaged image it meets, and a trainer
skips what it cannot decode. This reads each shard of the ingest and curated stages once, in
parallel, and names every shard with an image missing or changed, and the stage to run again,
before GPU hours go into it. A curated folder copied on its own (`lvd verify CURATED_DIR`) is
checked against its own index.

The driver holds no image's row: it streams each index's `shard` column and hands the workers
ranges of rows covering whole shards, which they read themselves (at a billion images, the
indexes' rows as Python objects would not fit in one machine).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import assemble, ingest
from curation.shards import read_members_until_error
from foundation.errors import StageError
from foundation.executors import MapFn

ROWS_PER_TASK = 1 << 16
"""Images per task at most (whole shards): about one row group of an index, a few GB of shards."""
TASKS_AT_LEAST = 64  # a small index is still spread over the workers, down to a shard a task
SCAN_ROWS = 1 << 20  # rows of the `shard` column the driver holds at once


@dataclass(frozen=True)
class IndexRange:
    """Rows [start, stop) of an index sorted by shard, covering whole shards: the images those
    shards must hold and their sha256."""

    stage: str
    folder: str  # where the index's shards lie
    index: str
    start: int
    stop: int
    shards: int


@dataclass(frozen=True)
class ShardCheck:
    """A shard to read back: the stage that wrote it and the sha256 each of its JPEGs must have."""

    stage: str
    tar: str
    expected: dict[str, str]  # member name ({key}.jpg) -> sha256


@dataclass(frozen=True)
class ShardVerdict:
    """What reading a shard back found: how many images match, and what is wrong (None: nothing)."""

    stage: str
    tar: str
    images: int
    matching: int
    problem: str | None


def verify_shard(check: ShardCheck) -> ShardVerdict:
    """Read every expected JPEG of one shard and compare its sha256 with the recorded one."""
    found, error = read_members_until_error(check.tar, set(check.expected))
    changed = sorted(name for name, data in found.items() if hashlib.sha256(data).hexdigest() != check.expected[name])
    missing = sorted(set(check.expected) - set(found))
    matching = len(found) - len(changed)
    problems = []
    if changed:
        problems.append(
            f"{len(changed)} of {len(check.expected)} images changed (first {changed[0].removesuffix('.jpg')})"
        )
    if error:
        problems.append(f"unreadable after {len(found)} of {len(check.expected)} images ({error})")
    elif missing:
        problems.append(
            f"{len(missing)} of {len(check.expected)} images missing (first {missing[0].removesuffix('.jpg')})"
        )
    return ShardVerdict(check.stage, check.tar, len(check.expected), matching, "; ".join(problems) or None)


def verify_tasks(path: Path) -> list[IndexRange]:
    """The ranges to read back: for a run, every shard of the ingest stage (pool and reference sets)
    and then every curated shard; for a curated folder on its own, its shards."""
    if is_curated_folder(path):
        return index_ranges(assemble.STAGE, path, _curated_index(path))
    ingest_dir = path / ingest.STAGE
    if not (ingest_dir / "index.parquet").is_file():
        raise StageError(
            f"{path} is neither a run with a finished ingest stage ({ingest_dir}/index.parquet) nor a curated "
            "folder (index.parquet beside its shards); nothing to verify"
        )
    tasks = []
    for folder in ingest.collections(ingest_dir).values():
        tasks += index_ranges(ingest.STAGE, folder, folder / "index.parquet")
    curated_dir = path / assemble.STAGE
    if (curated_dir / "index.parquet").is_file():
        tasks += index_ranges(assemble.STAGE, curated_dir, _curated_index(curated_dir))
    return tasks


def is_curated_folder(path: Path) -> bool:
    """A curated stage's folder copied on its own: its index beside its shards, no run around it."""
    return (path / "index.parquet").is_file() and not (path / ingest.STAGE).is_dir()


def _curated_index(curated_dir: Path) -> Path:
    index = curated_dir / "index.parquet"
    if "sha256" not in pq.ParquetFile(index).schema_arrow.names:
        raise StageError(
            f"{index} has no sha256 column: it was assembled before curated indexes recorded hashes; "
            "re-run from curated (--from curated)"
        )
    return index


def index_ranges(stage: str, folder: Path, index: Path) -> list[IndexRange]:
    """Ranges of whole shards of `index`, about ROWS_PER_TASK rows each, found by streaming its
    `shard` column (both stages write their indexes in shard order)."""
    file = pq.ParquetFile(index, pre_buffer=False)
    starts, row, seen, previous = [], 0, set(), None
    for batch in file.iter_batches(SCAN_ROWS, columns=["shard"]):
        shards = batch.column(0).to_numpy()
        for at in np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]):
            shard = int(shards[at])
            if at == 0 and shard == previous:
                continue  # the batch goes on with the previous batch's shard
            if shard in seen:
                raise StageError(
                    f"{index}: shard {shard} is split by other shards' rows; the index is not in shard order"
                )
            seen.add(shard)
            starts.append(row + int(at))
            previous = shard
        row += len(shards)
    target = max(1, min(ROWS_PER_TASK, row // TASKS_AT_LEAST))
    bounds, first = [*starts, row], 0
    ranges = []
    for i in range(1, len(bounds)):
        if bounds[i] - bounds[first] >= target or i == len(bounds) - 1:
            ranges.append(IndexRange(stage, str(folder), str(index), bounds[first], bounds[i], i - first))
            first = i
    return ranges


def read_rows(index: Path, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows [start, stop) of a parquet file, reading only the row groups that hold them."""
    file = pq.ParquetFile(index, pre_buffer=False)
    groups, first_row, skip = [], 0, 0
    for group in range(file.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        if first_row < stop and first_row + size > start:
            skip = skip if groups else start - first_row
            groups.append(group)
        first_row += size
    return file.read_row_groups(groups, columns=columns).slice(skip, stop - start)


def verify_range(task: IndexRange) -> list[ShardVerdict]:
    """Read back every shard of one range of an index."""
    rows = read_rows(Path(task.index), task.start, task.stop, ["key", "sha256", "shard"]).to_pydict()
    expected: dict[int, dict[str, str]] = defaultdict(dict)
    for key, sha256, shard in zip(rows["key"], rows["sha256"], rows["shard"], strict=True):
        # No recorded hash: nothing read back can match it.
        expected[shard][f"{key}.jpg"] = sha256 or ""
    folder = Path(task.folder)
    return [
        verify_shard(ShardCheck(task.stage, str(folder / f"{shard:06d}.tar"), names))
        for shard, names in sorted(expected.items())
    ]


def verify_all(tasks: list[IndexRange], map_fn: MapFn, progress: Callable[[int], None]) -> list[ShardVerdict]:
    """A verdict for every shard of `tasks`, in the order `map_fn` finishes them."""
    verdicts = []
    for found in map_fn(verify_range, tasks):
        verdicts += found
        progress(len(found))
    return verdicts


def summary_line(verdicts: list[ShardVerdict], curated_folder: bool = False) -> str:
    """Images and shards read per stage, and what to do if any shard is damaged: the stage to run
    again from (the earliest: re-running ingest rewrites the curated shards too), or, for a curated
    folder on its own, to copy the damaged shards again."""
    parts = []
    for stage in (ingest.STAGE, assemble.STAGE):
        mine = [v for v in verdicts if v.stage == stage]
        if mine:
            images, matching = sum(v.images for v in mine), sum(v.matching for v in mine)
            damaged = sum(v.problem is not None for v in mine)
            parts.append(f"{stage} {images - matching} of {images} images damaged in {damaged} of {len(mine)} shards")
    first = next(
        (stage for stage in (ingest.STAGE, assemble.STAGE) if any(v.stage == stage and v.problem for v in verdicts)),
        None,
    )
    if first is None:
        advice = ": every image matches its recorded sha256"
    elif curated_folder:
        advice = ": copy the damaged shards again from where this folder came from"
    else:
        advice = f": re-run from {first} (--from {first})"
    return "verify: " + "; ".join(parts) + advice
