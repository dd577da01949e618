"""Thumbnails of ingested images, by key, as inline JPEG data URIs for the report's image grids."""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from curation.shards import read_at

STORED = ["key", "shard", "offset", "bytes"]  # where each JPEG lies in its ingest shard

THUMBNAIL = 96


class Thumbnails:
    """Looks keys up in one ingest collection's index and reads each image at its offset."""

    def __init__(self, collection_dir: Path):
        self.root = collection_dir
        index_path = collection_dir / "index.parquet"
        table = pq.read_table(index_path, columns=STORED) if index_path.exists() else None
        self.stored = {row["key"]: row for row in table.to_pylist()} if table else {}

    def get(self, keys: list[str]) -> dict[str, str]:
        """key -> data URI, for the keys found in this collection."""
        by_shard: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)
        for key in keys:
            if row := self.stored.get(key):
                by_shard[row["shard"]][f"{key}.jpg"] = (row["offset"], row["bytes"])
        found: dict[str, str] = {}
        for shard, members in by_shard.items():
            for name, data in read_at(self.root / f"{shard:06d}.tar", members).items():
                found[name.removesuffix(".jpg")] = thumbnail_uri(data)
        return found


def thumbnail_uri(jpeg: bytes) -> str:
    image = Image.open(io.BytesIO(jpeg))
    image.draft("RGB", (THUMBNAIL, THUMBNAIL))
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
