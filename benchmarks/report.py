"""Report time and size on a large run, and the ratio to the bare reads of the files it summarises.

    python benchmarks/report.py [--images 100000] [--workdir /tmp/lvd-report-bench]

Builds (once, then reuses) a synthetic crawl of `--images` pool files and curates it with the
demo recipe, then times `write_report` against reading every parquet file it reads. Targets
(issue 9): a 100k-image run's report in under 5 s and under 20 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from curation.report.render import write_report
from curation.synth.crawl import make_crawl


def bare_reads(run: Path) -> float:
    """Seconds to read the tables the report is made from."""
    start = time.perf_counter()
    for folder in ("ingest", "dedup", "decontam", "retrieve", "curated"):
        for path in (run / folder).rglob("*.parquet"):
            pq.read_table(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-report-bench"))
    args = parser.parse_args()
    crawl, run = args.workdir / f"crawl-{args.images}", args.workdir / f"run-{args.images}"
    if not (crawl / "truth.parquet").exists():
        make_crawl(crawl, images=args.images)
    curate = [sys.executable, "-m", "pipelines.curate", str(crawl / "curation.yaml"), "--run-dir", str(run)]
    subprocess.run(curate, check=True)

    bare = bare_reads(run)
    start = time.perf_counter()
    write_report(run, args.workdir / "report")
    seconds = time.perf_counter() - start
    megabytes = (args.workdir / "report" / "index.html").stat().st_size / 1e6
    print(f"{args.images} images: report {seconds:.2f} s (target < 5 s), {megabytes:.1f} MB (target < 20 MB)")
    print(f"bare parquet reads {bare:.2f} s; ratio bare / report {bare / seconds:.2f}")


if __name__ == "__main__":
    main()
