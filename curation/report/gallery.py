"""Thumbnails of ingested images, by key, as inline JPEG data URIs for the report's image grids."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from curation.shards import read_each_at

LOCATION = ["shard", "offset", "bytes"]  # where each JPEG lies in its ingest shard

THUMBNAIL = 96


class Thumbnails:
    """Looks keys up in one ingest collection's index and reads each image at its offset."""

    def __init__(self, collection_dir: Path):
        self.root = collection_dir
        index_path = collection_dir / "index.parquet"
        table = pq.read_table(index_path, columns=["key", *LOCATION]) if index_path.exists() else None
        rows = zip(*(table[name].to_pylist() for name in table.column_names), strict=True) if table else ()
        self.location = {key: (shard, offset, size) for key, shard, offset, size in rows}

    def get(self, keys: list[str]) -> dict[str, str]:
        """key -> data URI, for the keys found in this collection."""
        found = {key: self.location[key] for key in keys if key in self.location}
        members = [
            (self.root / f"{shard:06d}.tar", f"{key}.jpg", offset, size) for key, (shard, offset, size) in found.items()
        ]
        return {key: thumbnail_uri(jpeg) for key, jpeg in zip(found, read_each_at(members), strict=True)}


def thumbnail_uri(jpeg: bytes) -> str:
    image = Image.open(io.BytesIO(jpeg))
    image.draft("RGB", (THUMBNAIL, THUMBNAIL))
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
