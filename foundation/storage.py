"""Where config paths point: a local path, a `file://` URL, or any fsspec URL (s3://, gs://, …).

At LVD-142M scale the crawl's tars, the URL lists, the seed and evaluation sets, checkpoints and
the curated training shards live on object storage, so every config path that is *read* accepts
an fsspec URL and is opened through fsspec (s3fs, gcsfs … installed as the URL needs). A
`file://` URL is the local path it names.

Paths that are *written* (a run directory, a training `output_dir`; also a teacher run read
back through torch.distributed.checkpoint) are `LocalPath`s and must be on a POSIX file system,
local or a shared mount: stages commit their output by atomic rename, which object stores do not
have. They accept a local path or a `file://` URL; another URL is a config error that says so,
not a failure halfway through a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import fsspec
from pydantic import PlainSerializer, PlainValidator, ValidationInfo, WithJsonSchema
from upath import UPath

from foundation.errors import ConfigError

Location = Path | UPath
"""A readable location: a local `Path`, or a `UPath` (pathlib's API over an fsspec file system)."""


def is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def local_path(text: str) -> Path:
    """The local path named by `text`, a path or a file:// URL."""
    return Path(url2pathname(urlparse(text).path)) if text.startswith("file://") else Path(text)


def location(value: str | Path, base_dir: str | Path | None = None) -> Location:
    """A config value as a location; relative local paths resolve against `base_dir` when given."""
    text = str(value)
    if is_url(text):
        return UPath(text)
    path = local_path(text)
    if base_dir is not None and not path.is_absolute():
        path = (Path(base_dir) / path).resolve()
    return path


def open_input(source: str | Location) -> IO[bytes]:
    """A binary reader for a local path or any fsspec URL (a tar shard, a parquet file, a checkpoint)."""
    text = str(source)
    return fsspec.open(text, "rb").open() if is_url(text) else open(local_path(text), "rb")


def read_bytes(source: str | Location) -> bytes:
    with open_input(source) as handle:
        return handle.read()


def _config_location(value: Any, info: ValidationInfo) -> Location:
    if not isinstance(value, str | Path | UPath):
        raise ValueError(f"expected a path or URL, got {type(value).__name__}")
    return location(value, (info.context or {}).get("base_dir"))


def posix_path(value: str | Path, base_dir: str | Path | None = None) -> Path:
    """`value` as a local path (file:// URLs included), or a ConfigError for an object-store URL."""
    found = location(value, base_dir)
    if not isinstance(found, Path):
        raise ConfigError(
            f"{value} is not on a POSIX file system: this path is committed with atomic renames, which "
            "object stores lack; use a local path, a shared mount, or a file:// URL"
        )
    return found


def _config_local_path(value: Any, info: ValidationInfo) -> Path:
    if not isinstance(value, str | Path):
        raise ValueError(f"expected a path, got {type(value).__name__}")
    try:
        return posix_path(value, (info.context or {}).get("base_dir"))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


_AS_STRING = PlainSerializer(str, return_type=str)
_SCHEMA = WithJsonSchema({"type": "string", "format": "uri-reference"})

ConfigPath = Annotated[Location, PlainValidator(_config_location), _AS_STRING, _SCHEMA]
"""A path read by the pipeline: local path, file:// or fsspec URL; relative paths resolve against
the directory of the config file they came from (as docker-compose does)."""

LocalPath = Annotated[Path, PlainValidator(_config_local_path), _AS_STRING, _SCHEMA]
"""A path on a POSIX file system: a local path or a file:// URL, resolved like ConfigPath."""
