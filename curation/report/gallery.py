"""Thumbnails of ingested images, by key, as inline JPEG data URIs for the report's image grids."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from curation.shards import read_each_at

LOCATION = ["shard", "offset", "bytes"]  # where each JPEG lies in its ingest shard

THUMBNAIL = 96


class Thumbnails:
    """Looks keys up in one ingest collection's index and reads each image at its offset."""

    def __init__(self, collection_dir: Path):
        self.root = collection_dir

    def get(self, keys: list[str]) -> dict[str, str]:
        """key -> data URI, for the keys found in this collection. The index is scanned a batch at a
        time for them: the pool's holds a row per crawled image, a billion at the paper's scale."""
        index_path = self.root / "index.parquet"
        if not keys or not index_path.exists():
            return {}
        wanted = pa.array(set(keys), pa.string())
        found = [
            batch.filter(pc.is_in(batch["key"].cast(pa.string()), value_set=wanted))
            for batch in pq.ParquetFile(index_path).iter_batches(columns=["key", *LOCATION])
        ]
        rows = pa.Table.from_batches(found).to_pylist() if found else []
        members = [(self.root / f"{r['shard']:06d}.tar", f"{r['key']}.jpg", r["offset"], r["bytes"]) for r in rows]
        return {r["key"]: thumbnail_uri(jpeg) for r, jpeg in zip(rows, read_each_at(members), strict=True)}


def thumbnail_uri(jpeg: bytes) -> str:
    image = Image.open(io.BytesIO(jpeg))
    image.draft("RGB", (THUMBNAIL, THUMBNAIL))
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
