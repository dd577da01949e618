"""A decoder that dies hard (a segfault, the OOM killer) costs one quarantined input, not the stage.

The crash is planted in the test process before ingest forks its workers: a wrapper around
`clean_image` calls `os.abort()` on inputs holding a marker, as a native decoder crashing on one
file would. Forked workers inherit it, so it runs where the real decoder runs.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import decode
from curation.pipeline import curate
from curation.run_config import load_curation_config
from foundation.errors import WorkerCrashed
from foundation.executors import process_map

MARKER = b"KILLS-THE-DECODER"
OVERRIDES = ["ingest.sources=[{kind: folder, path: pool}]", "ingest.shard_size=6", "ingest.workers=2"]

pytestmark = pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork", reason="the planted crash reaches workers by fork"
)


def crashing_on_marker(real):
    def clean_image(data: bytes, limits: decode.DecodeLimits):
        if MARKER in data:
            faulthandler.disable()  # pytest's crash report, inherited by fork, is not this test's output
            os.abort()
        return real(data, limits)

    return clean_image


def small_crawl(crawl: Path, pool_truth: list[dict], out: Path, poisoned: bool) -> Path:
    """The crawl's config, seed and eval sets, and 24 of its pool files (some broken), which ingest
    cuts into 4 shards of 6; with `poisoned`, one more file, first in order, that kills the decoder."""
    (out / "pool").mkdir(parents=True)
    shutil.copy(crawl / "curation.yaml", out / "curation.yaml")
    for name in ("seeds", "eval"):
        shutil.copytree(crawl / name, out / name)
    for row in pool_truth[:24]:
        shutil.copy(crawl / row["path"], out / "pool" / Path(row["path"]).name)
    if poisoned:
        good = next(r for r in pool_truth if not r["broken_reason"])
        (out / "pool" / "p000000_poison.jpg").write_bytes((crawl / good["path"]).read_bytes() + MARKER)
    return out


def ingest(crawl: Path, run_dir: Path) -> Path:
    curate(load_curation_config(crawl / "curation.yaml", OVERRIDES), run_dir, ("ingest",), executor="local")
    return run_dir / "ingest"


def test_the_input_that_kills_its_decoder_is_quarantined_and_the_rest_kept(crawl, pool_truth, tmp_path, monkeypatch):
    poisoned = small_crawl(crawl, pool_truth, tmp_path / "poisoned", poisoned=True)
    monkeypatch.setattr(decode, "clean_image", crashing_on_marker(decode.clean_image))
    out = ingest(poisoned, tmp_path / "run")

    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    crashed = [r for r in quarantine if r["reason"] == "crashed_decoder"]
    assert [Path(r["source"]).name for r in crashed] == ["p000000_poison.jpg"]
    assert "killed by SIGABRT" in crashed[0]["detail"]
    index = pq.read_table(out / "index.parquet")
    assert index.num_rows + len(quarantine) == 25

    monkeypatch.undo()  # without the poison, the other 24 inputs come out the same
    reference = ingest(small_crawl(crawl, pool_truth, tmp_path / "clean", poisoned=False), tmp_path / "reference")
    expected = pq.read_table(reference / "index.parquet")
    assert (
        index.drop_columns(["source", "shard", "offset"])
        .sort_by("key")
        .equals(expected.drop_columns(["source", "shard", "offset"]).sort_by("key"))
    )


def die_on_three(n: int) -> int:
    if n == 3:
        faulthandler.disable()
        os.abort()
    return n * n


def test_process_map_runs_a_dead_item_again_then_reports_it_after_the_others():
    results = []
    with pytest.raises(WorkerCrashed) as crash:
        results.extend(process_map(2)(die_on_three, range(6)))
    assert sorted(results) == [0, 1, 4, 16, 25] and crash.value.items == [3]
