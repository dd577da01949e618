"""`lvd verify`'s driver at pool scale: cutting an index into tasks, against a bare scan of it.

    python benchmarks/verify_plan.py [--rows 16000000] [--shard-size 1000] [--record]

The driver of `lvd verify` reads each index's `shard` column and hands the workers ranges of
whole shards (`verify.index_ranges`); the workers read the rows themselves. A synthetic index of
`--rows` rows (16-hex keys, sha256 hex digests, shards of `--shard-size`) is written once; then,
each in a fresh process, the bare scan (the `shard` column in batches, keeping nothing) and
`index_ranges` are timed, with the process's peak resident memory above what it held after its
imports. The memory should stay flat as --rows grows. Recorded (--record):
verify.driver_rows_per_s, the rate at which the driver cuts an index into tasks.
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


def write_index(path: Path, rows: int, shard_size: int) -> None:
    """An ingest-like index in row groups as ingest writes them."""
    from foundation.files import ROW_GROUP_ROWS

    with pq.ParquetWriter(path, pa.schema([("key", pa.string()), ("sha256", pa.string()), ("shard", pa.int32())])) as w:
        for start in range(0, rows, ROW_GROUP_ROWS):
            at = np.arange(start, min(rows, start + ROW_GROUP_ROWS))
            keys = np.char.mod("%016x", at)
            digests = np.char.add(np.char.add(keys, keys), np.char.add(keys, keys))
            w.write_table(pa.table({"key": keys, "sha256": digests, "shard": (at // shard_size).astype(np.int32)}))


def measure(side: str, index: Path) -> dict[str, float]:
    """In this process: seconds for `side`, its peak resident memory's growth, and the tasks it made."""
    from curation.measurements import peak_memory_growth
    from curation.verify import index_ranges

    def scan() -> int:
        for _ in pq.ParquetFile(index, pre_buffer=False).iter_batches(1 << 20, columns=["shard"]):
            pass
        return 0

    started = time.perf_counter()
    tasks, grown = peak_memory_growth(
        (lambda: len(index_ranges("ingest", index.parent, index))) if side == "ranges" else scan
    )
    return {"seconds": time.perf_counter() - started, "rss": grown, "tasks": tasks}


def in_fresh_process(side: str, index: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", side, str(index)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16_000_000, help="rows of the index")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--record", action="store_true", help="append the rate to benchmarks/results.jsonl")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # SIDE INDEX: one side, in a child
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index.parquet"
        write_index(index, args.rows, args.shard_size)
        bare, ranges = (in_fresh_process(side, index) for side in ("bare", "ranges"))
    print(f"index of {args.rows:,} rows in shards of {args.shard_size:,}")
    print(f"bare scan of its shard column {bare['seconds']:6.2f} s   peak RSS +{bare['rss'] / 2**20:5.0f} MiB")
    print(
        f"index_ranges                  {ranges['seconds']:6.2f} s   peak RSS +{ranges['rss'] / 2**20:5.0f} MiB"
        f"   {ranges['tasks']:,} tasks   ratio {bare['seconds'] / ranges['seconds']:.2f}"
    )
    if args.record:
        from curation.measurements import record

        rate = args.rows / ranges["seconds"]
        record("benchmarks/verify_plan.py", "verify.driver_rows_per_s", rate, "rows/s", "verify")


if __name__ == "__main__":
    main()
