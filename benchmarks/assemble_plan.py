"""Assembly's planning at pool scale: time and driver memory against a bare scan of the ingest index.

    python benchmarks/assemble_plan.py [--pool 16000000] [--curated 1000000] [--rows 4] [--record]

The driver's part of the curated stage (`assemble.plan`: group the rows' selections into one
lineage list per image, shuffle, find each image in the ingest index) is what grows with the
curated set in one process, while the shards are written by tasks. A synthetic ingest index of
`--pool` rows (16-hex keys, 70-character URLs) and `--rows` retrieval rows selecting `--curated`
of them (a tenth selected by a second row as well) are written once; then, each in a fresh
process, the bare scan (reading the columns the plan needs, in batches, keeping nothing) and the
plan are timed, and Arrow's peak allocation per curated image is printed. The peak should stay
flat as --pool grows: it depends on the curated set, not the pool. Recorded (--record):
assemble.plan_bytes_per_image, which `--plan` multiplies by the curated set's size to say how
much memory the driver needs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_inputs(root: Path, pool: int, curated: int, rows: int) -> dict[str, str]:
    """An ingest index and the rows' selections under `root`; returns the rows (name -> strategy)."""
    from curation.ingest import INDEX_SCHEMA

    rng = np.random.default_rng(0)
    keys = np.char.mod("%016x", rng.integers(0, 2**63, pool, dtype=np.int64))
    columns = {
        "key": keys,
        "source": np.char.add("https://images.example.com/crawl/2026/11/", np.char.add(keys, ".jpg")),
        "source_kind": np.full(pool, "urls"),
        "width": np.full(pool, 500),
        "height": np.full(pool, 375),
        "bytes": np.full(pool, 44_000),
        "sha256": np.char.add(keys, keys),
        "shard": np.arange(pool) // 10_000,
        "offset": np.arange(pool) % 10_000 * 45_568 + 512,
        "original_format": np.full(pool, "JPEG"),
        "original_mode": np.full(pool, "RGB"),
        "reencoded": np.zeros(pool, bool),
    }
    (root / "ingest").mkdir(parents=True)
    index = pa.table({field.name: pa.array(columns[field.name], field.type) for field in INDEX_SCHEMA})
    pq.write_table(index, root / "ingest" / "index.parquet")
    picked = rng.choice(pool, curated, replace=False)
    for row, part in enumerate(np.array_split(picked, rows)):
        chosen = np.r_[part, rng.choice(picked, len(part) // 10)]
        selected = {
            "key": keys[chosen],
            "collection": np.full(len(chosen), "pool"),
            "query_key": keys[rng.choice(pool, len(chosen))],
            "similarity": rng.random(len(chosen)).astype(np.float32),
        }
        (root / "retrieve" / f"row{row}").mkdir(parents=True)
        pq.write_table(pa.table(selected), root / "retrieve" / f"row{row}" / "selected.parquet")
    return {f"row{row}": "sample" for row in range(rows)}


def measure(side: str, root: Path, rows: dict[str, str]) -> dict[str, float]:
    """In this process: seconds for `side` and Arrow's peak allocation in bytes."""
    from curation.assemble import COLUMNS, plan

    started = time.perf_counter()
    if side == "plan":
        plan(root / "ingest", root / "retrieve", rows, seed=0)
    else:
        index = pq.ParquetFile(root / "ingest" / "index.parquet", pre_buffer=False)
        for _ in index.iter_batches(1 << 20, columns=COLUMNS):
            pass
    return {"seconds": time.perf_counter() - started, "peak": pa.default_memory_pool().max_memory()}


def in_fresh_process(side: str, root: Path, rows: dict[str, str]) -> dict[str, float]:
    """`measure` in a new interpreter, so that each side's peak is its own."""
    command = [sys.executable, __file__, "--measure", side, str(root), json.dumps(rows)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=16_000_000, help="rows of the ingest index")
    parser.add_argument("--curated", type=int, default=1_000_000, help="distinct images the rows select")
    parser.add_argument("--rows", type=int, default=4, help="retrieval rows")
    parser.add_argument("--record", action="store_true", help="append the peak to benchmarks/results.jsonl")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # SIDE ROOT ROWS: one side, in a child
    args = parser.parse_args()
    if args.measure:
        side, root, rows = args.measure
        print(json.dumps(measure(side, Path(root), json.loads(rows))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_inputs(Path(tmp), args.pool, args.curated, args.rows)
        bare, planned = (in_fresh_process(side, Path(tmp), rows) for side in ("bare", "plan"))
    print(f"ingest index of {args.pool:,} rows, {args.curated:,} curated images from {args.rows} rows")
    print(f"bare scan of the index {bare['seconds']:6.2f} s   Arrow peak {bare['peak'] / 2**20:7.0f} MiB")
    print(
        f"plan                    {planned['seconds']:6.2f} s   Arrow peak {planned['peak'] / 2**20:7.0f} MiB"
        f" ({planned['peak'] / args.curated:,.0f} bytes a curated image)   ratio {bare['seconds'] / planned['seconds']:.2f}"
    )
    if args.record:
        from curation.measurements import record

        peak = planned["peak"] / args.curated
        record("benchmarks/assemble_plan.py", "assemble.plan_bytes_per_image", peak, "bytes", "assemble")


if __name__ == "__main__":
    main()
