"""What every ingest must satisfy against the crawl's truth, whatever the source kind."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

FAILING_HTTP = {"404", "500", "slow"}


def read_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    ingest = run_dir / "ingest"
    return (
        pq.read_table(ingest / "index.parquet").to_pylist(),
        pq.read_table(ingest / "quarantine.parquet").to_pylist(),
    )


def check_accounting(
    run_dir: Path, pool_truth: list[dict], source_of, over_http: bool = False, extra: set[str] = frozenset()
) -> None:
    """Every truth file is ingested or quarantined exactly once, each for the right reason.

    `source_of(row)` gives the ingest `source` string a truth row must appear under; `extra` are
    quarantined inputs the test planted beside the crawl.
    """
    index, quarantine = read_run(run_dir)
    seen = Counter([r["source"] for r in index] + [r["source"] for r in quarantine])
    expected = {source_of(row): row for row in pool_truth}
    assert set(seen) == set(expected) | extra, "ingested + quarantined must equal the crawl"
    assert max(seen.values()) == 1, "an input is accounted for twice"

    reasons = {r["source"]: r for r in quarantine}
    for source, row in expected.items():
        failed_download = over_http and row["http"] in FAILING_HTTP
        if failed_download:
            assert reasons[source]["reason"] == "download_failed", (source, reasons.get(source))
            if row["http"] != "slow":
                assert row["http"] in reasons[source]["detail"]
        elif row["broken_reason"]:
            assert reasons[source]["reason"] == row["broken_reason"], (source, reasons.get(source))
        else:
            assert source not in reasons, f"good image quarantined: {reasons.get(source)}"

    sizes = {r["source"]: (r["width"], r["height"]) for r in index}
    for source, (w, h) in sizes.items():
        assert (w, h) == (expected[source]["width"], expected[source]["height"]), source


def check_shards_readable(run_dir: Path) -> None:
    """The shards hold exactly the index's samples, in order, as RGB JPEGs webdataset can read."""
    index, _ = read_run(run_dir)
    shards = sorted(str(p) for p in (run_dir / "ingest").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [r["key"] for r in index]
    for sample in samples[:: max(1, len(samples) // 50)]:
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB"
