"""Parquet files concatenated a row group at a time: same rows, bounded row groups."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from foundation import files

SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.int32())])


def test_concat_parquet_keeps_every_row_in_order_in_row_groups_of_the_set_size(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "ROW_GROUP_ROWS", 100)
    sizes = [30, 0, 45, 80, 7, 120, 3]
    parts = []
    for shard, size in enumerate(sizes):
        parts.append(tmp_path / f"{shard}.parquet")
        keys = [f"{shard}-{i}" for i in range(size)]
        pq.write_table(pa.table({"key": keys, "shard": pa.array([shard] * size, pa.int64())}), parts[-1])
    assert files.concat_parquet(parts, tmp_path / "all.parquet", SCHEMA) == sum(sizes)
    merged = pq.ParquetFile(tmp_path / "all.parquet")
    assert merged.schema_arrow == SCHEMA
    assert merged.read()["key"].to_pylist() == [f"{s}-{i}" for s, n in enumerate(sizes) for i in range(n)]
    groups = [merged.metadata.row_group(i).num_rows for i in range(merged.num_row_groups)]
    assert max(groups) <= 100 and merged.num_row_groups == -(-sum(sizes) // 100)


def test_concat_parquet_of_nothing_is_an_empty_table_with_the_schema(tmp_path):
    assert files.concat_parquet([], tmp_path / "none.parquet", SCHEMA) == 0
    assert pq.read_table(tmp_path / "none.parquet").schema == SCHEMA
