"""`lvd verify RUN`: every image a run stored, read back and hashed against what ingest recorded.

Ingest records each JPEG's sha256 in its collection's `index.parquet`, and the curated shards hold
the same bytes. Storage can change a file after it is written (a partial copy, bit rot, a zeroed
block): embed then stops at the first damaged image it meets, and a trainer skips what it cannot
decode. This reads each shard of the ingest and curated stages once, in parallel, and names every
shard with an image missing or changed, and the stage to run again, before GPU hours go into it.

Each ingest index is read once: its hashes check the ingest shards and then the curated images
taken from them. Like assemble, this holds the ingest indexes in memory (a few hundred bytes an
image).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from curation import assemble, ingest
from curation.shards import read_members_until_error
from foundation.errors import StageError
from foundation.executors import MapFn


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


def shard_checks(run_dir: Path) -> list[ShardCheck]:
    """Every shard of the ingest stage (pool and reference sets), then every curated shard, whose
    images' hashes are those their collection's ingest index recorded."""
    ingest_dir = run_dir / ingest.STAGE
    if not (ingest_dir / "index.parquet").is_file():
        raise StageError(f"{run_dir} has no finished ingest stage ({ingest_dir}/index.parquet); nothing to verify")
    checks, recorded = [], {}
    for collection, folder in ingest.collections(ingest_dir).items():
        rows = pq.read_table(folder / "index.parquet", columns=["key", "sha256", "shard"]).to_pylist()
        recorded.update({(collection, row["key"]): row["sha256"] for row in rows})
        checks += checks_by_shard(ingest.STAGE, folder, rows)
    curated_dir = run_dir / assemble.STAGE
    if (curated_dir / "index.parquet").is_file():
        rows = pq.read_table(curated_dir / "index.parquet", columns=["key", "collection", "shard"]).to_pylist()
        rows = [row | {"sha256": recorded.get((row["collection"], row["key"]))} for row in rows]
        checks += checks_by_shard(assemble.STAGE, curated_dir, rows)
    return checks


def checks_by_shard(stage: str, folder: Path, rows: list[dict]) -> list[ShardCheck]:
    """One check per shard number in index rows (key, sha256, shard)."""
    expected: dict[int, dict[str, str]] = defaultdict(dict)
    for row in rows:
        # No recorded hash (a curated image its ingest index lacks): nothing read back can match it.
        expected[row["shard"]][f"{row['key']}.jpg"] = row["sha256"] or ""
    return [ShardCheck(stage, str(folder / f"{shard:06d}.tar"), names) for shard, names in sorted(expected.items())]


def verify_shards(checks: list[ShardCheck], map_fn: MapFn, progress: Callable[[int], None]) -> list[ShardVerdict]:
    """A verdict for every check, in the order `map_fn` finishes them."""
    verdicts = []
    for verdict in map_fn(verify_shard, checks):
        verdicts.append(verdict)
        progress(1)
    return verdicts


def summary_line(verdicts: list[ShardVerdict]) -> str:
    """Images and shards read per stage, and the stage to run again from if any shard is damaged
    (the earliest: re-running ingest rewrites the curated shards too)."""
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
    advice = f": re-run from {first} (--from {first})" if first else ": every image matches its recorded sha256"
    return "verify: " + "; ".join(parts) + advice
