"""Files that appear whole or not at all: write beside the target, then rename over it.

Every stage's "kill it and run it again" rests on this: a file that exists is complete, so a
re-run can trust what it finds and redo only what is missing. The rename is atomic on a POSIX
file system, which is why run directories must live on one (see `storage.LocalPath`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without
    an exception, removed when it raises."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_parquet(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


ROW_GROUP_ROWS = 1 << 17
"""Rows per row group of a concatenated file: few enough row groups that the footer stays small at
a billion rows, small enough that a reader of a few thousand rows reads little else."""


def concat_parquet(parts: list[Path], path: str | Path, schema: pa.Schema) -> int:
    """Write the rows of `parts`, in order, into one parquet file at `path` in full row groups of
    ROW_GROUP_ROWS, holding about one row group at a time (a merge of every part in memory would
    hold the whole pool's index); returns the number of rows."""
    rows, pending = 0, schema.empty_table()
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            table = pq.read_table(part).cast(schema)
            rows += table.num_rows
            pending = pa.concat_tables([pending, table])
            full = pending.num_rows // ROW_GROUP_ROWS * ROW_GROUP_ROWS
            if full:
                writer.write_table(pending.slice(0, full), row_group_size=ROW_GROUP_ROWS)
                pending = pending.slice(full)
        if pending.num_rows:
            writer.write_table(pending, row_group_size=ROW_GROUP_ROWS)
    return rows


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class RowGroupFiles:
    """Tables, as they come, into numbered parquet files of `groups_per_file` row groups of
    `group_rows` rows each (the last file short): a reader finds row r in file r // (group_rows ·
    groups_per_file), and the writer holds at most one file's rows."""

    def __init__(self, folder: Path, group_rows: int, groups_per_file: int) -> None:
        self.folder, self.group_rows = folder, group_rows
        self.file_rows = group_rows * groups_per_file
        self.pending: list[pa.Table] = []
        self.buffered = self.rows = self.files = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.file_rows:
            self._write(self.file_rows)

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)

    def _write(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        with atomic_path(self.folder / f"{self.files:06d}.parquet") as tmp:
            pq.write_table(table.slice(0, rows), tmp, row_group_size=self.group_rows)
        self.pending = [table.slice(rows)]
        self.buffered -= rows
        self.rows += rows
        self.files += 1
