"""WebDataset tar shards: a byte-reproducible writer and a reader that refuses unsafe members.

A shard is a plain POSIX tar of `{key}.{ext}` members grouped by key, the layout
`webdataset.WebDataset` and the trainer read. The writer fixes every header field that would
otherwise vary between runs (mtime, owner, permissions), so re-running a stage on the same input
gives the same bytes, which is what makes "kill it and run it again" checkable.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from curation.errors import CorruptInput

SIDECAR_EXTENSIONS = frozenset({"json", "txt", "cls", "caption", "url", "parquet"})


class ShardWriter:
    """Write samples into one tar at `path` via a temporary file renamed into place on close."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes | dict[str, Any]]) -> None:
        """Add one sample: `members` maps an extension (`jpg`, `json`) to bytes or a JSON-able dict."""
        for ext, value in members.items():
            payload = value if isinstance(value, bytes) else canonical_json(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(payload), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(payload))
        self.count += 1

    def close(self) -> None:
        self._tar.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)


def canonical_json(value: dict[str, Any]) -> bytes:
    """JSON with sorted keys and no whitespace variance, so equal dicts give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be read as a sample (path escape, link, device), or None if safe."""
    path = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or path.is_absolute():
        return f"absolute path {member.name!r}"
    if ".." in path.parts:
        return f"path {member.name!r} escapes the archive with '..'"
    if member.issym() or member.islnk():
        return f"link {member.name!r} -> {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return f"special file {member.name!r}"
    return None


def list_members(tar_path: Path) -> list[tarfile.TarInfo]:
    """All regular-file and unsafe members of a tar (directories dropped), in archive order."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            return [m for m in tar.getmembers() if not m.isdir()]
    except (tarfile.TarError, OSError) as exc:
        raise CorruptInput(f"cannot list tar {tar_path}: {exc}; fix or remove the file") from exc


def read_members(tar_path: Path, names: set[str]) -> dict[str, bytes]:
    """Bytes of the named regular-file members, reading the tar sequentially once."""
    found: dict[str, bytes] = {}
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            if member.name in names and unsafe_member_reason(member) is None:
                handle = tar.extractfile(member)
                found[member.name] = handle.read() if handle else b""
    return found


def iter_samples(tar_path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a WebDataset shard's members by key: yields (key, {ext: bytes}) in archive order."""
    key, sample = None, {}
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            if unsafe_member_reason(member) is not None:
                raise CorruptInput(f"{tar_path}: {unsafe_member_reason(member)}")
            if not member.isfile():
                continue
            stem, _, ext = member.name.partition(".")
            if stem != key and key is not None:
                yield key, sample
                sample = {}
            key = stem
            handle = tar.extractfile(member)
            sample[ext] = handle.read() if handle else b""
    if key is not None:
        yield key, sample
