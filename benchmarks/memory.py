"""The memory that grows with the pool in one process: per vector loaded, per input listed.

    python benchmarks/memory.py [--sizes 200000 400000] [--dim 128] [--record]

Two structures are held whole in one process, so they set the size of the machine a stage needs
whatever the fleet (`--plan` states both):
- vectors: dedup, decontam and retrieve each load a role's pool vectors (`embed.read_embeddings`);
  the bare figure is the float32 vector's own 4·d bytes;
- listing: ingest's driver lists every input before any work (`ingest.list_inputs`, here of a
  folder source of empty files under 45-character paths); the bare figure is the path's bytes.
Each size is measured in a fresh process (the growth of its peak resident memory; Linux only), and the slope
between the two sizes is the cost of one more item: thread pools, allocator arenas and imports
drop out. Recorded (--record): embed.load_bytes_per_image at d@DIM (`--plan` keeps what lies
beyond the float32 vector, the keys mostly, and adds 4·d for each role's width) and
ingest.listing_bytes_per_input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_vectors(folder: Path, n: int, dim: int) -> None:
    """Embedding files as the embed stage writes them, an ingest shard's 10,000 rows each."""
    from curation.embed import write_embeddings

    rng = np.random.default_rng(0)
    for part, start in enumerate(range(0, n, 10_000)):
        keys = [f"{key:016x}" for key in range(start, min(n, start + 10_000))]
        write_embeddings(folder / f"{part:06d}.parquet", keys, rng.standard_normal((len(keys), dim), np.float32))


def write_crawl(folder: Path, n: int) -> None:
    """A folder source of `n` empty files, 1,000 a folder."""
    for start in range(0, n, 1000):
        below = folder / "photos" / f"{start // 1000:04d}"
        below.mkdir(parents=True)
        for i in range(start, min(n, start + 1000)):
            (below / f"img_{i:08d}.jpg").touch()


def measure(kind: str, folder: Path) -> dict[str, float]:
    """In this process: the peak resident memory's growth while loading or listing `folder`, and
    the bare bytes."""
    from curation.embed import read_embeddings
    from curation.ingest import list_inputs
    from curation.measurements import peak_memory_growth
    from curation.sources import FolderSource

    if kind == "vectors":
        (keys, vectors), grown = peak_memory_growth(lambda: read_embeddings(folder))
        return {"grown": grown, "items": len(keys), "bare": vectors.nbytes}
    refs, grown = peak_memory_growth(lambda: list_inputs([FolderSource(path=folder / "photos")], 1000, folder))
    return {"grown": grown, "items": len(refs), "bare": sum(len(ref.source) for ref in refs)}


def slope(kind: str, sizes: list[int], dim: int) -> tuple[float, float]:
    """Bytes one more item costs, and its bare bytes, between the two sizes."""
    found = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write_vectors(Path(tmp), n, dim) if kind == "vectors" else write_crawl(Path(tmp), n)
            command = [sys.executable, __file__, "--measure", kind, tmp]
            found.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    items = found[1]["items"] - found[0]["items"]
    return (found[1]["grown"] - found[0]["grown"]) / items, (found[1]["bare"] - found[0]["bare"]) / items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[200_000, 400_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--record", action="store_true", help="append both slopes to benchmarks/results.jsonl")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # KIND FOLDER: one size, in a child
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    vector, vector_bare = slope("vectors", args.sizes, args.dim)
    listed, listed_bare = slope("listing", args.sizes, args.dim)
    print(
        f"a vector loaded (d={args.dim}): {vector:7,.0f} bytes; the float32 vector {vector_bare:5,.0f}; ratio {vector_bare / vector:.2f}"
    )
    print(
        f"an input listed:           {listed:7,.0f} bytes; its path      {listed_bare:5,.0f}; ratio {listed_bare / listed:.2f}"
    )
    if args.record:
        from curation.measurements import record

        record("benchmarks/memory.py", "embed.load_bytes_per_image", vector, "bytes", f"d@{args.dim}")
        record("benchmarks/memory.py", "ingest.listing_bytes_per_input", listed, "bytes", "ingest")


if __name__ == "__main__":
    main()
