"""Where crawled images come from: a URL list (downloaded with img2dataset), a folder tree, tar shards.

Each source turns its configuration into a listing, an Arrow table with one row per input file
(`LISTING_SCHEMA`), so the ingest stage treats all three alike: read bytes, check, write. A row
is one `InputRef` to the worker that ingests it; the driver holds a source's listing as Arrow
columns (with its sort and keys, 162 bytes a folder input where a list of Python refs took
300: a crawl lists a billion). Inputs that fail before ingest sees any bytes (a download error, an unsafe tar member)
carry a `failure` and end in the quarantine.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from curation.shards import SIDECAR_EXTENSIONS, list_members, read_members_until_error, unsafe_member_reason
from foundation.config import Section
from foundation.errors import ConfigError, CorruptInput
from foundation.files import RowGroupFiles
from foundation.ray_session import connect_ray
from foundation.storage import ConfigPath, Location, open_input, read_bytes

log = logging.getLogger(__name__)

DOWNLOAD_FAILED = "download_failed"
UNSAFE_MEMBER = "unsafe_tar_member"
UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)  # slots: a crawl lists one per input before any work starts
class InputRef:
    """One input file: where its bytes are, what names it, and, if it already failed, why.

    `source` says where the bytes are (the URL, the file's path, `tar_path::member`) and goes into
    the index for people; `identity` names the input independently of where the crawl is mounted
    (the URL; the source folder's name plus the path below it; the tar's path below the source
    plus the member), and the sample key hashes it, so the same crawl read from another folder
    gets the same keys, order and shards. `container` is the tar holding the bytes (tar sources
    and downloads) and `member` its name; for folder sources `container` is None.
    """

    source: str
    identity: str
    kind: str
    container: str | None = None
    member: str | None = None
    failure: tuple[str, str] | None = None


LISTING_SCHEMA = pa.schema(
    [
        ("source", pa.large_string()),
        ("identity", pa.large_string()),
        ("kind", pa.dictionary(pa.int8(), pa.string())),
        ("container", pa.large_string()),
        ("member", pa.large_string()),
        ("failure", pa.large_string()),  # (failure, detail): InputRef.failure
        ("detail", pa.large_string()),
    ]
)
"""An `InputRef` a row (large strings: a billion paths pass the 2 GiB of a string array)."""


def full_listing(table: pa.Table, kind: str) -> pa.Table:
    """`table`'s listing columns (`source`, `identity` and whichever others its source has) as
    LISTING_SCHEMA rows of `kind`, the columns it lacks null: filled a batch at a time as the
    listing is written, since a null large-string column still costs 8 bytes a row."""
    kinds = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int8)), pa.array([kind]))
    columns = []
    for field in LISTING_SCHEMA:
        if field.name == "kind":
            columns.append(kinds)
        elif field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.table(columns, schema=LISTING_SCHEMA)


def refs_of(table: pa.Table) -> list[InputRef]:
    """The refs of listing rows (one shard's, in a worker)."""
    return [
        InputRef(
            row["source"],
            row["identity"],
            row["kind"],
            row["container"],
            row["member"],
            (row["failure"], row["detail"]) if row["failure"] is not None else None,
        )
        for row in table.to_pylist()
    ]


def read_refs(refs: list[InputRef]) -> dict[str, bytes | tuple[str, str]]:
    """Bytes of every ref that has not failed, keyed by `source`, or (`unreadable`, why) for one
    whose bytes cannot be read (an I/O error, a tar that breaks before its member); each tar is
    read once, sequentially."""
    data: dict[str, bytes | tuple[str, str]] = {}
    by_tar: dict[str, dict[str, str]] = {}
    for ref in refs:
        if ref.failure is not None:
            continue
        if ref.container is None:
            data[ref.source] = _read_file(ref.source)
        else:
            by_tar.setdefault(ref.container, {})[ref.member] = ref.source
    for tar, members in by_tar.items():
        found, error = read_members_until_error(tar, set(members))
        for member, source in members.items():
            data[source] = found.get(member, (UNREADABLE, f"tar {tar} broke before this member: {error}"))
    return data


def _read_file(source: str) -> bytes | tuple[str, str]:
    try:
        return read_bytes(source)
    except OSError as exc:
        return UNREADABLE, f"{type(exc).__name__}: {exc}"


class FolderSource(Section):
    """Every regular file under `path` (recursively, hidden files excluded) is one input."""

    kind: Literal["folder"] = "folder"
    path: ConfigPath

    def listing(self, work_dir: Path, shard_size: int) -> pa.Table:
        """Listing columns (`full_listing`), unsorted: `ingest.list_inputs` sorts by identity."""
        if not self.path.is_dir():
            raise ConfigError(f"ingest source folder {self.path} does not exist or is not a directory")
        name = self.path.name
        if isinstance(self.path, Path):
            # Every walked path starts with `root`: its one replacement by `name/` is the identity.
            root = str(self.path).rstrip(os.sep) + os.sep
            paths = _arrow_strings(_walk_files(root))
            identities = pc.replace_substring(paths, root, f"{name}/", max_replacements=1)
            if os.sep != "/":
                identities = pc.replace_substring(identities, os.sep, "/")
            return pa.table({"source": paths, "identity": identities})
        files = _find_files(self.path)
        identities = [f"{name}/{path.relative_to(self.path).as_posix()}" for path in files]
        return pa.table({"source": [str(path) for path in files], "identity": identities})


def _find_files(root: Location) -> list[Location]:
    """The files under a remote folder, skipping hidden files and folders (one fsspec listing)."""
    return [
        path
        for path in root.rglob("*")
        if not any(part.startswith(".") for part in path.relative_to(root).parts) and path.is_file()
    ]


def _walk_files(root: str) -> Iterator[str]:
    """Paths of the regular files under a local `root`, skipping hidden files and folders (os.scandir:
    a pathlib walk was a tenth of ingest's time)."""
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    yield entry.path


ARROW_BATCH = 1 << 16


def _arrow_strings(strings: Iterable[str]) -> pa.ChunkedArray:
    """`strings` as Arrow large strings, ARROW_BATCH at a time: never a Python list of them all."""
    it, chunks = iter(strings), []
    while batch := list(itertools.islice(it, ARROW_BATCH)):
        chunks.append(pa.array(batch, pa.large_string()))
    return pa.chunked_array(chunks, pa.large_string())


class TarSource(Section):
    """Every regular member of the tar file(s) at `path` (a tar or a folder of `*.tar`) is one input.

    WebDataset sidecars (`.json`, `.txt`, `.cls` …) beside an image are metadata, not inputs.
    Members that would escape an extraction directory (`../x.jpg`, `/etc/x.jpg`) or are links are
    never read; they are quarantined with the reason.
    """

    kind: Literal["tar"] = "tar"
    path: ConfigPath

    def listing(self, work_dir: Path, shard_size: int) -> pa.Table:
        """Unsorted; `ingest.list_inputs` sorts by identity."""
        if self.path.is_dir():
            tars = sorted(p for p in self.path.rglob("*") if p.suffix in (".tar", ".tgz") or p.name.endswith(".tar.gz"))
            names = [f"{self.path.name}/{tar.relative_to(self.path).as_posix()}" for tar in tars]
        elif self.path.is_file():
            tars, names = [self.path], [self.path.name]
        else:
            raise ConfigError(f"ingest source tar path {self.path} does not exist")
        tables = [_refs_table(self._tar_refs(tar, name)) for tar, name in zip(tars, names, strict=True)]
        return pa.concat_tables([_refs_table([]), *tables])

    def _tar_refs(self, tar: Location, name: str) -> list[InputRef]:
        """One ref per image member; a tar that breaks while listed adds one `unreadable` ref for the
        rest of it (`tar::` and the reason), so a bad archive is seen in the quarantine, not lost."""
        members, error = list_members(tar)
        stems_with_images = {
            m.name.rsplit(".", 1)[0] for m in members if m.name.rsplit(".", 1)[-1].lower() not in SIDECAR_EXTENSIONS
        }
        refs = []
        for m in members:
            stem, _, ext = m.name.rpartition(".")
            if ext.lower() in SIDECAR_EXTENSIONS and stem in stems_with_images:
                continue
            unsafe = unsafe_member_reason(m)
            refs.append(
                InputRef(
                    source=f"{tar}::{m.name}",
                    identity=f"{name}::{m.name}",
                    kind=self.kind,
                    container=str(tar),
                    member=m.name,
                    failure=(UNSAFE_MEMBER, unsafe) if unsafe else None,
                )
            )
        if error:
            rest = f"after member {members[-1].name!r}" if members else "from its start"
            refs.append(
                InputRef(f"{tar}::", f"{name}::", self.kind, failure=(UNREADABLE, f"tar unreadable {rest}: {error}"))
            )
        return refs


class DownloadOptions(Section):
    """img2dataset settings for URL sources (its own names where they exist)."""

    execution_fields: ClassVar[frozenset[str]] = frozenset(
        {"processes_count", "thread_count", "distributor", "shard_retries"}
    )

    processes_count: int = Field(2, ge=1, description="local download processes (multiprocessing distributor)")
    thread_count: int = Field(32, ge=1)
    distributor: Literal["auto", "multiprocessing", "ray"] = Field(
        "auto",
        description="img2dataset's: 'ray' downloads each shard of URLs as a Ray task over the cluster; "
        "'auto' does so when the stage runs on Ray, else processes_count local processes",
    )
    timeout: float = Field(10.0, gt=0, description="seconds per request before it counts as failed")
    retries: int = Field(0, ge=0, description="tries again per URL after a failed request")
    shard_retries: int = Field(
        2,
        ge=0,
        description="times img2dataset runs again over the shards of URLs whose whole task failed (a write "
        "error, a lost storage connection); img2dataset's ray distributor never retries them itself",
    )
    user_agent_token: str | None = None


class UrlSource(Section):
    """URLs in a parquet/csv/txt file, downloaded with img2dataset into the stage's work folder.

    img2dataset runs with re-encoding disabled, so the bytes reach our own defensive decoder
    exactly as served, and in incremental mode, so a killed download resumes by shard.
    """

    kind: Literal["urls"] = "urls"
    path: ConfigPath
    url_column: str = "url"
    download: DownloadOptions = DownloadOptions()

    def listing(self, work_dir: Path, shard_size: int) -> pa.Table:
        """Unsorted; `ingest.list_inputs` sorts by identity (the URL)."""
        url_dir = work_dir / URL_LIST
        if not url_dir.exists():
            self._write_unique_urls(url_dir, shard_size)
        return self._download(url_dir, work_dir / "download", shard_size)

    def _write_unique_urls(self, url_dir: Path, shard_size: int) -> None:
        """The list's URLs, sorted and each once, into `url_dir` in files of whole shards of URLs.
        They are put in order a batch at a time through one sort index, so that the driver holds
        the list and its order, not copies of them; the folder appears when it is complete."""
        urls = self._read_urls()
        order = pc.sort_indices(urls)
        tmp = url_dir.with_name(url_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a killed run's
        tmp.mkdir(parents=True)
        files = RowGroupFiles(tmp, shard_size, max(1, URL_FILE_ROWS // shard_size))
        last = None
        for start in range(0, len(order), URL_BATCH):
            batch = urls.take(order.slice(start, URL_BATCH)).combine_chunks()
            files.add(pa.table({"url": batch.filter(_first_of_runs(batch, last))}))
            last = batch[-1]
        files.close()
        os.replace(tmp, url_dir)
        if len(urls) > files.rows:
            log.warning("%d repeated URLs in %s are ingested once", len(urls) - files.rows, self.path)

    def _download(self, url_dir: Path, download_dir: Path, shard_size: int) -> pa.Table:
        """img2dataset's row for every URL of `url_dir`, running it again over the shards of URLs
        whose task failed (img2dataset writes a shard's stats file last)."""
        parts = [pq.read_metadata(part).num_rows for part in sorted(url_dir.glob("*.parquet"))]
        urls = sum(parts)
        if not urls:
            return downloaded_listing(download_dir, self.kind)
        tries = self.download.shard_retries + 1
        for attempt in range(1, tries + 1):
            run_img2dataset(url_dir, download_dir, shard_size, self.download)
            undone = sorted(set(range(-(-urls // shard_size))) - _finished_shards(download_dir))
            if not undone:
                return _complete_listing(download_dir, self.kind, urls)
            log.warning("%d shards of URLs failed to download (try %d of %d)", len(undone), attempt, tries)
        left = sum(min(shard_size, urls - shard * shard_size) for shard in undone)
        example = _url_at(url_dir, parts, undone[0] * shard_size)
        raise CorruptInput(
            f"img2dataset left {left} URLs of {self.path} undone in {len(undone)} shards (e.g. {example}): their "
            f"tasks failed {tries} times, with the errors printed above; run the same command again to retry "
            "them (finished shards are kept)"
        )

    def _read_urls(self) -> pa.ChunkedArray:
        """The list's non-empty URLs, as Arrow large strings, read a batch at a time: a billion URLs
        are some 100 GB, and a copy of them all per step (a cast, a filter) would be as much again."""
        if not self.path.is_file():
            raise ConfigError(f"ingest source url list {self.path} does not exist")
        batches = (batch.cast(pa.large_string()) for batch in self._url_batches())
        return pa.chunked_array([batch.filter(pc.not_equal(batch, "")) for batch in batches], pa.large_string())

    def _url_batches(self) -> Iterator[pa.Array]:
        with open_input(self.path) as handle:
            if self.path.suffix != ".parquet":
                lines = (line.decode().strip() for line in handle)
                yield from _arrow_strings(lines).chunks
                return
            urls = pq.ParquetFile(handle)
            if self.url_column not in urls.schema_arrow.names:
                raise ConfigError(
                    f"{self.path} has no column {self.url_column!r} (columns: {urls.schema_arrow.names}); set url_column"
                )
            for batch in urls.iter_batches(columns=[self.url_column]):
                yield batch.column(0)


URL_LIST = "download_urls"  # work folder: the list's URLs, sorted, each once, as img2dataset reads them
URL_FILE_ROWS = 10_000_000
"""URLs a file of that list holds at most (whole shards of them): img2dataset reads each file of its
input whole, in the driver, so a billion URLs in one file would be read at once."""
URL_BATCH = 1 << 20  # URLs put in order, deduplicated and written at once


def _first_of_runs(urls: pa.Array, previous: pa.Scalar | None) -> pa.Array:
    """Whether each of sorted `urls` differs from the one before it (`previous` before the first)."""
    first = previous is None or urls[0] != previous
    return pa.concat_arrays([pa.array([first]), pc.not_equal(urls[1:], urls[:-1])])


def _finished_shards(download_dir: Path) -> set[int]:
    """The shards of URLs img2dataset finished: it writes `<shard>_stats.json` last."""
    return {int(path.name.split("_")[0]) for path in download_dir.glob("*_stats.json")}


def _complete_listing(download_dir: Path, kind: str, urls: int) -> pa.Table:
    listing = downloaded_listing(download_dir, kind)
    if listing.num_rows != urls:
        raise CorruptInput(
            f"img2dataset's records in {download_dir} hold {listing.num_rows} rows for {urls} URLs: the folder "
            "holds another list's downloads; delete it and re-run"
        )
    return listing


def _url_at(url_dir: Path, file_rows: list[int], row: int) -> str:
    """The URL at `row` of the list's files."""
    for part, rows in zip(sorted(url_dir.glob("*.parquet")), file_rows, strict=True):
        if row < rows:
            return pq.read_table(part)["url"][row].as_py()
        row -= rows
    raise IndexError(row)


def run_img2dataset(url_list: Path, output: Path, shard_size: int, options: DownloadOptions) -> None:
    """Download every URL in `url_list`'s files into WebDataset tars under `output`, resuming finished shards.

    On Ray the download is the ingest stage's own distributed work: the driver lists every input
    before any shard task starts, and a billion URLs fetched by one node's processes would take
    days, so each shard of URLs becomes a Ray task (img2dataset's ray distributor)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import
    from img2dataset import download  # heavy import, only needed for URL sources

    distributor = options.distributor
    if distributor == "auto":
        ray = sys.modules.get("ray")  # imported and connected by the stage's Ray executor, if it has one
        distributor = "ray" if ray is not None and ray.is_initialized() else "multiprocessing"
    if distributor == "ray":
        connect_ray()
    download(
        url_list=str(url_list),
        output_folder=str(output),
        input_format="parquet",
        url_col="url",
        output_format="webdataset",
        number_sample_per_shard=shard_size,
        disable_all_reencoding=True,
        extract_exif=False,
        compute_hash=None,
        processes_count=options.processes_count,
        thread_count=options.thread_count,
        timeout=options.timeout,
        retries=options.retries,
        user_agent_token=options.user_agent_token,
        incremental_mode="incremental",  # shards with a stats file are done; the others run again
        max_shard_retry=0,  # UrlSource.listing retries, for every distributor alike
        distributor=distributor,
        enable_wandb=False,
    )


def downloaded_listing(download_dir: Path, kind: str) -> pa.Table:
    """One row per URL from img2dataset's per-shard parquet: the tar member, or the error. A row's
    tar is a number into the list of tars (an Arrow dictionary), not its path again: at a billion
    URLs the path repeated would be the listing's largest column."""
    parts = sorted(download_dir.glob("*.parquet"))
    columns: dict[str, list[pa.Array]] = {name: [] for name in ("source", "tar", "member", "failure", "detail")}
    none = _large(None)
    for number, part in enumerate(parts):
        rows = pq.read_table(part, columns=["url", "key", "status", "error_message"])  # a part's rows: strings
        url, key, status, error = (rows[name].cast(pa.large_string()) for name in rows.column_names)
        ok = pc.fill_null(pc.equal(status, "success"), False)
        said = pc.fill_null(pc.not_equal(error, ""), False)  # the error message, else the status
        columns["source"].append(url)
        columns["tar"].append(pc.if_else(ok, pa.scalar(number, pa.int32()), pa.scalar(None, pa.int32())))
        columns["member"].append(pc.if_else(ok, pc.binary_join_element_wise(key, _large(".jpg"), _large("")), none))
        columns["failure"].append(pc.if_else(ok, none, _large(DOWNLOAD_FAILED)))
        columns["detail"].append(pc.if_else(ok, none, pc.if_else(said, error, status)))
    source, member, failure, detail = (
        pa.chunked_array(columns[name], pa.large_string()) for name in ("source", "member", "failure", "detail")
    )
    tars = pa.array([str(part.with_suffix(".tar")) for part in parts], pa.large_string())
    numbers = pa.chunked_array(columns["tar"], pa.int32()).combine_chunks()
    container = pa.DictionaryArray.from_arrays(numbers, tars)
    return pa.table(
        {
            "source": source,
            "identity": source,
            "container": container,
            "member": member,
            "failure": failure,
            "detail": detail,
        }
    )


def _large(text: str | None) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _refs_table(refs: list[InputRef]) -> pa.Table:
    """Listing columns of a few refs built in Python (one tar's members), every column but `kind`."""
    failures = [ref.failure or (None, None) for ref in refs]
    columns = {
        "source": [ref.source for ref in refs],
        "identity": [ref.identity for ref in refs],
        "container": [ref.container for ref in refs],
        "member": [ref.member for ref in refs],
        "failure": [failure for failure, _ in failures],
        "detail": [detail for _, detail in failures],
    }
    return pa.table({name: pa.array(values, pa.large_string()) for name, values in columns.items()})


Source = Annotated[FolderSource | TarSource | UrlSource, Field(discriminator="kind")]


def source_for_path(path: Location) -> FolderSource | TarSource:
    """The source kind for a reference-set path: tar shards (a tar, or a folder holding tars) or a folder tree."""
    if path.is_file() or (path.is_dir() and any(path.glob("*.tar"))):
        return TarSource(path=path)
    return FolderSource(path=path)
