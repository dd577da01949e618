"""Ingest stage: crawled inputs -> WebDataset shards `ingest/{shard:06d}.tar`, an index and a quarantine.

Every input ends in exactly one of two tables:
- `ingest/index.parquet`: key, source, source_kind, width, height, bytes, sha256, shard, offset, ...
  (one row per sample in the shards; `{key}.jpg` is the normalised image, `{key}.json` its facts;
  the JPEG's `bytes` start at `offset` in shard `shard`, so later stages read it without a scan);
- `ingest/quarantine.parquet`: key, source, source_kind, reason, detail (one row per rejected
  input: a broken file, a download error, an unsafe tar member).

Inputs are sorted by their identity (each source's, in the order of the sources) and cut into
shards of `shard_size`, so shard `i` always holds the same inputs: the driver writes that listing
into work files, a row group per shard, and each shard's worker reads its own rows. Each shard is
written under the stage's partial folder and marked done by its index part, so a killed ingest
resumes shard by shard and ends with the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curation import decode
from curation.decode import CleanImage, DecodeLimits, Rejection
from curation.rundir import StageWork
from curation.shards import ShardWriter
from curation.sources import URL_LIST, InputRef, Source, full_listing, read_refs, refs_of, source_for_path
from foundation.config import Section
from foundation.errors import CorruptInput, WorkerCrashed
from foundation.executors import MapFn
from foundation.files import RowGroupFiles, concat_parquet, write_parquet

log = logging.getLogger(__name__)

STAGE = "ingest"
POOL = "pool"  # the crawl's own collection; reference sets are `seeds/<row>` and `eval/<set>`
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("source_kind", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),  # where the JPEG's bytes start in its shard, for `shards.read_at`
        ("original_format", pa.string()),
        ("original_mode", pa.string()),
        ("reencoded", pa.bool_()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("source_kind", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def collections(ingest_dir: Path) -> dict[str, Path]:
    """Collection name -> folder of shards: the pool plus every reference set ingest wrote."""
    found = {POOL: ingest_dir}
    for group in ("seeds", "eval"):
        for folder in sorted((ingest_dir / group).glob("*")) if (ingest_dir / group).is_dir() else []:
            found[f"{group}/{folder.name}"] = folder
    return found


def collection_dir(ingest_dir: Path, collection: str) -> Path:
    return ingest_dir if collection == POOL else ingest_dir / collection


class IngestConfig(Section):
    """Inputs and the rules an acceptable image must meet."""

    execution_fields: ClassVar[frozenset[str]] = frozenset({"workers"})

    sources: list[Source] = Field(min_length=1)
    shard_size: int = Field(1000, ge=1, description="inputs per output shard")
    workers: int = Field(2, ge=1, description="parallel shard writers on the local machine")
    max_pixels: int = Field(50_000_000, ge=1, description="larger images are decompression bombs")
    min_side: int = Field(32, ge=1, description="images with a shorter side are quarantined")
    jpeg_quality: int = Field(95, ge=1, le=100, description="for images that must be re-encoded")

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_pixels, self.min_side, self.jpeg_quality)


KEY_SCHEME = "identity-v2"
"""Hashed into the stage: run directories from before keys hashed identities (v1 hashed the absolute
path) re-run ingest instead of mixing keys of both schemes."""


def key_of(identity: str) -> str:
    """Stable 16-hex-digit sample key from an input's identity (see `InputRef`): the same input
    has the same key wherever its crawl is mounted."""
    return hashlib.sha1(identity.encode()).hexdigest()[:16]


def key_numbers(identities: list[str]) -> np.ndarray:
    """`key_of` of each identity as the 64-bit number its hex digits spell, from the digest's first
    8 bytes (no hex string to make and parse): the driver keys every input of the crawl this way."""
    digests = b"".join(hashlib.sha1(identity.encode()).digest()[:8] for identity in identities)
    return np.frombuffer(digests, ">u8").astype(np.uint64)


LISTING = "listing"  # work folder: every input in shard order, a row group per shard
SHARDS_PER_LISTING_FILE = 64
SORT_BATCH = 1 << 16  # listing rows put in order, keyed and written at once


def listed_refs(out_dir: Path, shard: int) -> list[InputRef]:
    """The inputs of one shard, from the listing `list_inputs` wrote under `out_dir`."""
    file, group = divmod(shard, SHARDS_PER_LISTING_FILE)
    return refs_of(pq.ParquetFile(out_dir / LISTING / f"{file:06d}.parquet").read_row_group(group))


@dataclass(frozen=True)
class ShardTask:
    """One output shard: its inputs are row group `index` of the listing, written beside its output."""

    index: int
    out_dir: Path
    limits: DecodeLimits

    @property
    def tar_path(self) -> Path:
        return self.out_dir / f"{self.index:06d}.tar"

    @property
    def index_part(self) -> Path:
        return self.out_dir / "parts" / f"{self.index:06d}.index.parquet"

    @property
    def quarantine_part(self) -> Path:
        return self.out_dir / "parts" / f"{self.index:06d}.quarantine.parquet"

    def is_done(self) -> bool:
        return self.index_part.exists() and self.quarantine_part.exists() and self.tar_path.exists()


def ingest_shard(task: ShardTask, isolated: bool = False) -> tuple[int, int]:
    """Check every input of one shard, write the good ones to its tar; returns (ingested, quarantined).

    `isolated` decodes each input in a child process of its own (`clean_image_isolated`), for a
    shard whose worker died on every try. Written order: tar, quarantine part, index part
    (renamed last, so its presence means done).
    """
    refs = listed_refs(task.out_dir, task.index)
    data = read_refs(refs)
    clean = decode.clean_image_isolated if isolated else decode.clean_image
    rows, rejected = [], []
    with ShardWriter(task.tar_path) as writer:
        for ref in refs:
            key = key_of(ref.identity)
            found = ref.failure or data[ref.source]
            result = clean(found, task.limits) if isinstance(found, bytes) else Rejection(*found)
            if isinstance(result, CleanImage):
                meta = _sample_meta(key, ref, result)
                offset = writer.write(key, {"jpg": result.jpeg, "json": meta})["jpg"]
                rows.append({**meta, "bytes": len(result.jpeg), "shard": task.index, "offset": offset})
            else:
                rejected.append(
                    {
                        "key": key,
                        "source": ref.source,
                        "source_kind": ref.kind,
                        "reason": result.reason,
                        "detail": result.detail,
                    }
                )
    task.index_part.parent.mkdir(exist_ok=True)
    write_parquet(pa.Table.from_pylist(rejected, QUARANTINE_SCHEMA), task.quarantine_part)
    write_parquet(pa.Table.from_pylist(rows, INDEX_SCHEMA), task.index_part)
    return len(rows), len(rejected)


def _sample_meta(key: str, ref: InputRef, image: CleanImage) -> dict[str, object]:
    return {
        "key": key,
        "source": ref.source,
        "source_kind": ref.kind,
        "width": image.width,
        "height": image.height,
        "sha256": image.sha256,
        "original_format": image.original_format,
        "original_mode": image.original_mode,
        "reencoded": image.reencoded,
    }


def list_inputs(sources: list[Source], shard_size: int, out_dir: Path) -> int:
    """Write every input of every source, each source's sorted by identity, into `out_dir/listing/`
    (a row group per shard, SHARDS_PER_LISTING_FILE shards a file); returns how many there are.
    A key collision between inputs is an error.

    The driver holds one source's listing as Arrow columns and each input's key as a 64-bit integer;
    collisions are found on the keys, sorted (a dict of key strings would cost more than the listing).
    """
    folder = out_dir / LISTING
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    writer = RowGroupFiles(folder, shard_size, SHARDS_PER_LISTING_FILE)
    keys = [np.zeros(0, np.uint64)]
    for source in sources:
        table = source.listing(out_dir, shard_size)
        order = pc.sort_indices(table["identity"])
        for start in range(0, len(order), SORT_BATCH):
            batch = table.take(order.slice(start, SORT_BATCH))
            identities = batch["identity"].to_pylist()
            keys.append(key_numbers(identities))
            writer.add(full_listing(batch, source.kind))
    writer.close()
    _refuse_repeated_keys(np.concatenate(keys), out_dir, shard_size)
    return writer.rows


def _refuse_repeated_keys(keys: np.ndarray, out_dir: Path, shard_size: int) -> None:
    """A one-line error naming the first input, in listing order, whose key an earlier one has."""
    order = np.argsort(keys, kind="stable")
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if not len(repeated):
        return
    later = int(order[repeated + 1].min())
    earlier = int(np.flatnonzero(keys == keys[later])[0])
    first, then = (listed_refs(out_dir, row // shard_size)[row % shard_size] for row in (earlier, later))
    raise CorruptInput(
        f"inputs {first.source!r} and {then.source!r} have the same identity {then.identity!r} (key "
        f"{key_of(then.identity)}): a file listed twice, or two sources whose folders have the same name"
    )


def run_ingest(
    config: IngestConfig,
    work: StageWork,
    map_fn: MapFn,
    progress: Callable[[int], None] = lambda n: None,
    references: dict[str, Path] | None = None,
) -> dict[str, int]:
    """Ingest the pool into `work.path` and each reference set (seed and evaluation images, which later
    stages embed beside the pool) into `work.path/<name>`; returns the counts for the manifest."""
    counts = ingest_collection(config.sources, work.path, config, map_fn, progress)
    for name, path in (references or {}).items():
        found = ingest_collection([source_for_path(path)], work.path / name, config, map_fn, progress)
        counts.update({f"{name}.{k}": found[k] for k in ("inputs", "ingested", "quarantined")})
    return counts


def ingest_collection(
    sources: list[Source], out_dir: Path, config: IngestConfig, map_fn: MapFn, progress: Callable[[int], None]
) -> dict[str, int]:
    """Shards, index and quarantine of one collection of inputs under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = list_inputs(sources, config.shard_size, out_dir)
    tasks = [ShardTask(i, out_dir, config.limits) for i in range(-(-inputs // config.shard_size))]
    todo = [t for t in tasks if not t.is_done()]
    progress(len(tasks) - len(todo))
    try:
        for _ in map_fn(ingest_shard, todo):
            progress(1)
    except WorkerCrashed as crash:  # the input that kills the decoder becomes `crashed_decoder`; the rest is kept
        for task in crash.items:
            log.warning("shard %d killed its worker on every try; decoding its inputs one by one", task.index)
            ingest_shard(task, isolated=True)
            progress(1)
    counts = _merge_parts(tasks, out_dir)
    counts["inputs"] = inputs
    counts["shards"] = len(tasks)
    _clean_work_files(out_dir)
    return counts


def _merge_parts(tasks: list[ShardTask], out_dir: Path) -> dict[str, int]:
    """The shards' index and quarantine parts, in shard order, as the collection's two tables."""
    ingested = concat_parquet([t.index_part for t in tasks], out_dir / "index.parquet", INDEX_SCHEMA)
    quarantined = concat_parquet([t.quarantine_part for t in tasks], out_dir / "quarantine.parquet", QUARANTINE_SCHEMA)
    reasons = Counter()
    for batch in pq.ParquetFile(out_dir / "quarantine.parquet").iter_batches(columns=["reason"]):
        reasons.update(
            {entry["values"]: entry["counts"] for entry in pc.value_counts(batch.column("reason")).to_pylist()}
        )
    return {
        "ingested": ingested,
        "quarantined": quarantined,
        **{f"quarantined.{r}": n for r, n in sorted(reasons.items())},
    }


def _clean_work_files(out_dir: Path) -> None:
    """Drop what only served the work (img2dataset downloads, per-shard parts) before the rename."""
    for name in ("download", URL_LIST, "parts", LISTING):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def summary_line(counts: dict[str, int]) -> str:
    """One line of counts that add up: inputs = ingested + quarantined (by reason)."""
    reasons = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in counts.items() if k.startswith("quarantined."))
    line = (
        f"ingest: {counts['inputs']} inputs -> {counts['ingested']} ingested + "
        f"{counts['quarantined']} quarantined ({reasons or 'none'}) in {counts['shards']} shards"
    )
    sets = [k.removesuffix(".inputs") for k in counts if k.endswith(".inputs")]
    if sets:
        ingested = sum(counts[f"{s}.ingested"] for s in sets)
        quarantined = sum(counts[f"{s}.quarantined"] for s in sets)
        line += f"; reference sets: {ingested} ingested + {quarantined} quarantined in {len(sets)} sets"
    return line
