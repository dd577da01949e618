"""WebDataset tar shards: a byte-reproducible writer and a reader that refuses unsafe members.

A shard is a plain POSIX tar of `{key}.{ext}` members grouped by key, the layout
`webdataset.WebDataset` and the trainer read. The writer fixes every header field that would
otherwise vary between runs (mtime, owner, permissions), so re-running a stage on the same input
gives the same bytes, which is what makes "kill it and run it again" checkable.
"""

from __future__ import annotations

import json
import os
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from foundation.errors import CorruptInput
from foundation.storage import Location, open_input

SIDECAR_EXTENSIONS = frozenset({"json", "txt", "cls", "caption", "url", "parquet"})


BLOCK = 512
RECORD = 20 * BLOCK  # tar's conventional record size; archives are padded to a multiple of it


def ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file with fixed metadata (mode 0444, uid/gid 0, mtime 0).

    Built directly rather than through `tarfile.TarInfo`: at thousands of small samples per
    second, tarfile's generic header code was a fifth of ingest's time.
    """
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = bytearray(BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000444\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[329:345] = b"0000000\0" * 2
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


class ShardWriter:
    """Write samples into one tar at `path` via a temporary file renamed into place on close."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = self._tmp.open("wb", buffering=1 << 20)
        self._written = 0
        self.count = 0

    def write(self, key: str, members: dict[str, bytes | dict[str, Any]]) -> dict[str, int]:
        """Add one sample: `members` maps an extension (`jpg`, `json`) to bytes or a JSON-able dict.

        Returns where each member's data starts in the tar (extension -> byte offset): an index
        that keeps it lets `read_at` fetch the member without scanning the tar.
        """
        chunks, offsets, position = [], {}, self._written
        for ext, value in members.items():
            payload = value if isinstance(value, bytes) else canonical_json(value)
            padding = bytes(-len(payload) % BLOCK)
            chunks += [ustar_header(f"{key}.{ext}", len(payload)), payload, padding]
            offsets[ext] = position + BLOCK
            position += BLOCK + len(payload) + len(padding)
        self._file.write(b"".join(chunks))
        self._written = position
        self.count += 1
        return offsets

    def close(self) -> None:
        end = self._written + 2 * BLOCK
        self._file.write(bytes(2 * BLOCK + (-end % RECORD)))
        self._file.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
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


def list_members(tar_path: str | Location) -> tuple[list[tarfile.TarInfo], str | None]:
    """The regular-file and unsafe members of a tar (directories dropped), in archive order, and
    why the listing stopped early (a truncated or corrupt archive), or None when it reached the end.

    A broken archive yields what could be read before the break rather than an error: in a crawl
    of many tars one bad file must cost its own members, not the run.
    """
    members: list[tarfile.TarInfo] = []
    try:
        with open_input(tar_path) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                if not member.isdir():
                    members.append(member)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        return members, f"{type(exc).__name__}: {exc}"
    return members, None


def read_members_until_error(tar_path: str | Location, names: set[str]) -> tuple[dict[str, bytes], str | None]:
    """Bytes of the named regular-file members, reading the tar (local or any fsspec URL) once, in
    order, and why reading stopped early (None when it reached the end)."""
    found: dict[str, bytes] = {}
    try:
        with open_input(tar_path) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                if member.name in names and unsafe_member_reason(member) is None:
                    handle = tar.extractfile(member)
                    found[member.name] = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        return found, f"{type(exc).__name__}: {exc}"
    return found, None


def read_at(tar_path: str | Location, members: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """Bytes of members of a tar `ShardWriter` wrote, each read at the (data offset, size) an index
    recorded, in offset order, without scanning the tar.

    The header before each member must be the one the writer made for that name and size, so an
    index that no longer matches its tar (the tar rewritten, damaged or cut short) is an error
    naming the tar, never another member's bytes.
    """
    found: dict[str, bytes] = {}
    try:
        with open_input(tar_path) as raw:
            for name, (offset, size) in sorted(members.items(), key=lambda item: item[1][0]):
                raw.seek(offset - BLOCK)
                block = raw.read(BLOCK + size)
                if len(block) < BLOCK + size or block[:BLOCK] != ustar_header(name, size):
                    raise CorruptInput(
                        f"tar {tar_path} holds no {name} of {size} bytes at offset {offset}, where its index "
                        "says; re-run the stage that wrote it"
                    )
                found[name] = block[BLOCK:]
    except (OSError, ValueError) as exc:  # ValueError: a negative seek, from an index that is not this tar's
        raise CorruptInput(f"cannot read tar {tar_path}: {type(exc).__name__}: {exc}") from exc
    return found


def read_each_at(members: list[tuple[str | Path, str, int, int]]) -> list[bytes]:
    """Bytes of each (tar, name, data offset, size), in order, opening each tar once (`read_at`)."""
    by_tar: dict[str | Path, dict[str, tuple[int, int]]] = defaultdict(dict)
    for tar, name, offset, size in members:
        by_tar[tar][name] = (offset, size)
    found = {tar: read_at(tar, named) for tar, named in by_tar.items()}
    return [found[tar][name] for tar, name, _, _ in members]


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
