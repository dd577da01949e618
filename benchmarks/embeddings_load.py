"""Loading a role's pool vectors (`embed.read_embeddings`): memory per image, against the float32
vectors' own bytes.

    python benchmarks/embeddings_load.py [--sizes 500000 1000000] [--dim 128] [--shard 10000] [--record]

dedup, decontam and retrieve each load the pool's vectors of one role into one process, so this is
what sets the memory of the machine they need (`--plan` states it per stage). Embedding parquet
files of `--shard` rows are written for each size; each size is then loaded in a fresh process and
the growth of its peak resident memory measured. The slope between the sizes is the memory a vector
costs (the fixed part, thread pools and allocator arenas, drops out); the bare figure is the float32
array's 4·d bytes. Recorded (--record): embed.load_bytes_per_image at d@DIM, from which `--plan`
takes the bytes beyond the float32 vector (the keys, mostly) and adds 4·d for each role's width.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_parts(folder: Path, n: int, dim: int, shard: int) -> None:
    from curation.embed import write_embeddings

    rng = np.random.default_rng(0)
    for part, start in enumerate(range(0, n, shard)):
        rows = range(start, min(n, start + shard))
        keys = [f"{key:016x}" for key in rows]
        write_embeddings(folder / f"{part:06d}.parquet", keys, rng.standard_normal((len(keys), dim), np.float32))


def measure(folder: Path) -> dict[str, float]:
    """In this process: peak RSS growth in bytes while loading every vector of `folder`."""
    from curation.embed import read_embeddings

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keys, vectors = read_embeddings(folder)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    return {"grown": grown, "images": len(keys), "dim": vectors.shape[1]}


def in_fresh_process(folder: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", str(folder)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[500_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shard", type=int, default=10_000, help="rows per embedding file (an ingest shard's)")
    parser.add_argument("--record", action="store_true", help="append the slope to benchmarks/results.jsonl")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # FOLDER: one load, in a child
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return
    grown = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write_parts(Path(tmp), n, args.dim, args.shard)
            grown.append(in_fresh_process(Path(tmp))["grown"])
    small, large = args.sizes
    slope = (grown[1] - grown[0]) / (large - small)
    for n, g in zip(args.sizes, grown, strict=True):
        print(f"{n:>10,} vectors of d={args.dim}: peak RSS +{g / 2**20:7.0f} MiB")
    bare = 4 * args.dim
    print(
        f"memory a vector costs {slope:,.0f} bytes; the float32 vector itself {bare:,} bytes; ratio {bare / slope:.2f}"
    )
    if args.record:
        from curation.measurements import record

        record("benchmarks/embeddings_load.py", "embed.load_bytes_per_image", slope, "bytes", f"d@{args.dim}")


if __name__ == "__main__":
    main()
