"""How `lvd verify` cuts an index into work without holding its rows: ranges of whole shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import verify
from foundation.errors import StageError


def write_index(path, shard_sizes: list[int], row_group: int) -> pa.Table:
    shards = np.repeat(np.arange(len(shard_sizes), dtype=np.int32), shard_sizes)
    table = pa.table(
        {"key": [f"k{i}" for i in range(len(shards))], "sha256": ["0" * 64] * len(shards), "shard": shards}
    )
    pq.write_table(table, path, row_group_size=row_group)
    return table


@pytest.mark.parametrize("scan_rows", [3, 7, 1 << 20])
@pytest.mark.parametrize("rows_per_task", [1, 10, 25, 1000])
def test_ranges_cover_every_row_once_in_whole_shards(tmp_path, monkeypatch, scan_rows, rows_per_task):
    """Shards cross scan batches and row groups; each range reads back exactly its shards' rows."""
    monkeypatch.setattr(verify, "SCAN_ROWS", scan_rows)
    monkeypatch.setattr(verify, "ROWS_PER_TASK", rows_per_task)
    monkeypatch.setattr(verify, "TASKS_AT_LEAST", 1)
    sizes = [5, 1, 12, 0, 9, 9, 3, 20, 2]
    table = write_index(tmp_path / "index.parquet", sizes, row_group=8)
    ranges = verify.index_ranges("ingest", tmp_path, tmp_path / "index.parquet")
    assert [r.start for r in ranges] == [0, *(r.stop for r in ranges[:-1])] and ranges[-1].stop == table.num_rows
    assert sum(r.shards for r in ranges) == sum(1 for n in sizes if n)
    shard_of_row = table["shard"].to_pylist()
    for r in ranges:
        rows = verify.read_rows(tmp_path / "index.parquet", r.start, r.stop, ["key", "shard"])
        assert rows["key"].to_pylist() == table["key"][r.start : r.stop].to_pylist()
        assert len(set(rows["shard"].to_pylist())) == r.shards
        assert r.start == 0 or shard_of_row[r.start - 1] != shard_of_row[r.start]  # no shard cut in two
        assert r.stop - r.start >= rows_per_task or r is ranges[-1]


def test_a_small_index_is_spread_down_to_a_shard_a_task(tmp_path):
    write_index(tmp_path / "index.parquet", [10] * 5, row_group=1 << 17)
    assert [r.shards for r in verify.index_ranges("ingest", tmp_path, tmp_path / "index.parquet")] == [1] * 5


def test_an_index_out_of_shard_order_is_refused(tmp_path):
    shards = pa.array([0, 0, 1, 1, 0], pa.int32())
    pq.write_table(pa.table({"key": list("abcde"), "sha256": ["0"] * 5, "shard": shards}), tmp_path / "index.parquet")
    with pytest.raises(StageError, match="shard 0 is split by other shards' rows"):
        verify.index_ranges("ingest", tmp_path, tmp_path / "index.parquet")
