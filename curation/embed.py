"""Embed stage: ingested shards -> L2-normalised fp16 embeddings, one parquet file per input shard.

    RUN/embed/<role>/<collection>/{shard:06d}.parquet   key (sorted), embedding fixed_size_list<float16>[D]
    RUN/embed/<role>/embedder.json                       embedder name, dim, preprocessing

A run may embed with several models, one per *role*, as the paper does: copy-detection features
for deduplication (`copy`) and a self-supervised backbone for retrieval (`retrieval`). Collections
are the pool (`pool`) and each seed and evaluation set ingest wrote (`seeds/<row>`, `eval/<set>`).

Work is cut into fixed batches per shard (`ShardJob.batches`), so every image is embedded in
the same batch whatever the number of workers, and a re-run after a kill gives the same bytes.
This module holds the pieces (reading, the model worker, the writer); `curation/embed_runner.py`
wires them into a Ray Data actor pool, or runs them in-process.
"""

from __future__ import annotations

import itertools
import json
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import Field

from curation.ingest import collections
from curation.shards import iter_samples
from foundation.config import Section
from foundation.errors import CorruptInput
from foundation.files import atomic_path, write_parquet
from foundation.storage import ConfigPath
from models.embedders import Embedder, Preprocess, create_embedder
from models.embedders.device_decode import UndecodableJpeg, decode_batch

STAGE = "embed"


class EmbedderSpec(Section):
    """One model: a registry name, its local weights, and how it is batched and run."""

    name: str = "tiny"
    weights: Literal["random"] | ConfigPath | None = None
    batch_size: int = Field(64, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp16", description="autocast dtype on GPU; CPU runs fp32")

    def build(self, device: str = "cpu") -> Embedder:
        return create_embedder(self.name, self.weights, device=device, precision=self.precision)


class EmbedConfig(Section):
    execution_fields: ClassVar[frozenset[str]] = frozenset({"actors", "gpus_per_actor", "threads_per_actor"})

    models: dict[str, EmbedderSpec] = Field(
        default_factory=lambda: {"copy": EmbedderSpec(), "retrieval": EmbedderSpec()},
        description="role -> embedder; dedup reads `copy`, retrieval and decontamination read their configured role",
    )
    actors: int = Field(1, ge=1, description="model replicas (one per GPU on GPU nodes)")
    gpus_per_actor: float = Field(0.0, ge=0, description="1 on GPU nodes; 0 runs the model on CPU")
    threads_per_actor: int = Field(0, ge=0, description="torch CPU threads per actor; 0 = cores / actors")
    decode: Literal["auto", "cpu", "device"] = Field(
        "auto",
        description="where JPEGs are decoded and preprocessed: in read tasks on CPU, or beside the model "
        "(nvjpeg on GPU); auto = device when the actors have GPUs",
    )
    prefetch: int = Field(2, ge=0, description="in-process runs: shards read and decoded ahead of the model")

    @property
    def decode_on_device(self) -> bool:
        return self.decode == "device" or (self.decode == "auto" and self.gpus_per_actor > 0)


@dataclass(frozen=True)
class ShardJob:
    """One ingested shard to embed with one role's model, and where its parquet goes."""

    collection: str
    shard: str
    out: str
    batch_size: int


def pending_jobs(ingest_dir: Path, role_dir: Path, batch_size: int) -> tuple[list[ShardJob], int]:
    """Jobs for the shards of every collection not yet embedded, and how many are already done."""
    jobs, done = [], 0
    for name, folder in collections(ingest_dir).items():
        for shard in sorted(folder.glob("*.tar")):
            out = role_dir / name / f"{shard.stem}.parquet"
            if out.exists():
                done += 1
                continue
            jobs.append(ShardJob(name, str(shard), str(out), batch_size))
    return jobs, done


def read_batches(job: ShardJob, preprocess: Preprocess, jpegs: bool = False) -> Iterator[dict[str, object]]:
    """One shard in fixed batches: rows of keys, the batch count and either uint8 pixels (decoded and
    preprocessed here) or, with `jpegs`, the JPEG files themselves for the model's side to decode.

    Both travel as raw bytes with a shape or lengths (compact, and free of tensor-column conversions).
    """
    samples = jpegs_of(job.shard)
    starts = range(0, len(samples), job.batch_size)
    for index, start in enumerate(starts):
        chunk = samples[start : start + job.batch_size]
        row = {"shard": job.shard, "out": job.out, "batch": index, "batches": len(starts)}
        row["keys"] = "\n".join(key for key, _ in chunk)
        if jpegs:
            files = [jpeg for _, jpeg in chunk]
            yield row | {"jpegs": b"".join(files), "lengths": json.dumps([len(f) for f in files])}
            continue
        pixels = np.stack([preprocessed(preprocess, job.shard, key, jpeg) for key, jpeg in chunk])
        yield row | {"pixels": pixels.tobytes(), "shape": json.dumps(pixels.shape)}
    if not samples:
        yield {"shard": job.shard, "out": job.out, "batch": 0, "batches": 1, "keys": "", "pixels": b"", "shape": "[0]"}


def jpegs_of(shard: str) -> list[tuple[str, bytes]]:
    """Each image of `shard` as (key, JPEG file), or the error that says the shard is damaged."""
    try:
        return [(key, sample.get("jpg", b"")) for key, sample in iter_samples(shard)]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise changed_since_ingest(f"{shard} can no longer be read", exc) from exc


def preprocessed(preprocess: Preprocess, shard: str, key: str, jpeg: bytes) -> np.ndarray:
    """`preprocess.from_jpeg(jpeg)`, or the error that says which image of which shard is broken."""
    try:
        return preprocess.from_jpeg(jpeg)
    except Exception as exc:  # any failure of the image library is this file's
        raise changed_since_ingest(f"image {key} in {shard} no longer decodes", exc) from exc


def changed_since_ingest(problem: str, error: BaseException) -> CorruptInput:
    """Ingest writes only images it has decoded whole, and marks a shard done only after its tar is
    closed, so a shard that no longer reads, or an image that no longer decodes, changed on storage
    since (a partial copy, bit rot). The stage stops: no retry fixes that, and embedding on would
    lose images silently."""
    cause = (str(error).strip().splitlines() or [""])[0]
    return CorruptInput(
        f"embed: {problem} ({type(error).__name__}: {cause}); "
        "the shard has changed since ingest wrote it (`lvd verify RUN` names every damaged shard): "
        "re-run from ingest (--from ingest)"
    )


class EmbedWorker:
    """The model side of the stage: one instance per actor, called on one fixed batch at a time."""

    def __init__(self, spec: EmbedderSpec, device: str = "cpu", threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.embedder = spec.build(device)
        # On a GPU, decoding goes to a stream of its own, so the prefetch threads' many small
        # resize kernels run beside the model's instead of queueing between them. The model's
        # stream has the higher priority: when both have kernels ready, the GPU schedules the
        # model's thread blocks first and decoding fills the gaps (it runs a shard or two ahead).
        on_gpu = self.embedder.device.type == "cuda"
        self.decode_stream = torch.cuda.Stream(self.embedder.device) if on_gpu else None
        self.model_stream = torch.cuda.Stream(self.embedder.device, priority=-1) if on_gpu else None

    def decoded(self, row: dict[str, object]) -> dict[str, object]:
        """The row with its JPEG files decoded beside the model into a uint8 batch (`decoded`); a
        row read as pixels comes back as it is.

        The in-process stage calls this on its prefetch threads, so decoding the next shard
        overlaps the model's forward on this one (torch's ops and nvjpeg release the GIL). On a
        GPU the row also carries the decode stream's event (`ready`) for the forward to wait on.
        """
        if "jpegs" not in row:
            return row
        offsets = np.cumsum([0, *json.loads(row["lengths"])])
        files = [row["jpegs"][a:b] for a, b in itertools.pairwise(offsets)]
        try:
            with torch.cuda.stream(self.decode_stream):  # a no-op without one
                pixels = decode_batch(files, self.embedder.preprocess, self.embedder.device)
        except UndecodableJpeg as exc:
            key = str(row["keys"]).split("\n")[exc.index]
            problem = f"image {key} in {row['shard']} no longer decodes"
            raise changed_since_ingest(problem, exc.__cause__) from exc.__cause__
        ready = self.decode_stream.record_event() if self.decode_stream else None
        rest = {key: value for key, value in row.items() if key not in ("jpegs", "lengths")}
        return rest | {"decoded": pixels, "ready": ready}

    def __call__(self, row: dict[str, object]) -> dict[str, object]:
        return self.launch(row).result()

    def launch(self, row: dict[str, object]) -> Launched:
        """Start embedding one batch. On a GPU this returns with the forward and the copy of its
        vectors to pinned host memory queued, not done: the in-process stage queues the next batch
        before it reads this one, so the GPU does not wait on the host's bookkeeping between them."""
        row = self.decoded(row)
        batch = {key: row[key] for key in ("out", "batch", "batches", "keys")}
        if "decoded" not in row and json.loads(row["shape"]) == [0]:  # a shard without images
            return Launched(batch, torch.zeros((0, self.embedder.dim), dtype=torch.float16), None)
        with torch.cuda.stream(self.model_stream):  # a no-op without one
            return Launched(batch, *self._vectors(self._pixels(row)))

    @staticmethod
    def _pixels(row: dict[str, object]) -> np.ndarray | torch.Tensor:
        """The row's uint8 batch: decoded beside the model (then made safe to read on the current
        stream), or read as pixels."""
        if "decoded" in row:
            return on_current_stream(row["decoded"], row["ready"])
        return np.frombuffer(bytearray(row["pixels"]), np.uint8).reshape(json.loads(row["shape"]))  # writable for torch

    def _vectors(self, pixels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """fp16 vectors on the host, and on a GPU the event after which they are there."""
        vectors = self.embedder.on_device(pixels).half()
        if vectors.device.type != "cuda":
            return vectors, None
        host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
        host.copy_(vectors, non_blocking=True)
        return host, torch.cuda.current_stream(vectors.device).record_event()


@dataclass(frozen=True)
class Launched:
    """A batch whose embedding is queued: its row's identity, and its vectors once `done` fires."""

    row: dict[str, object]
    vectors: torch.Tensor
    done: torch.cuda.Event | None

    def result(self) -> dict[str, object]:
        """The embedded row (`embedding`: fp16 bytes, `dim`), waiting for the device if it must."""
        if self.done is not None:
            self.done.synchronize()
        return self.row | {"embedding": self.vectors.numpy().tobytes(), "dim": self.vectors.shape[1]}


def on_current_stream(pixels: torch.Tensor, ready: torch.cuda.Event | None) -> torch.Tensor:
    """`pixels`, decoded on another stream, made safe to read on the current one: it waits for the
    decode, and the allocator keeps their memory until this stream is done with it."""
    if ready is not None:
        current = torch.cuda.current_stream(pixels.device)
        current.wait_event(ready)
        pixels.record_stream(current)
    return pixels


class ShardCollector:
    """Gathers a shard's embedded batches (in any order) and writes its parquet when the last arrives.

    Only shards with batches in flight are held in memory, so memory does not grow with the
    number of shards.
    """

    def __init__(self) -> None:
        self.pending: dict[str, dict[int, dict[str, object]]] = {}
        self.written = 0
        self.images = 0

    def add(self, row: dict[str, object]) -> None:
        batches = self.pending.setdefault(row["out"], {})
        batches[int(row["batch"])] = row
        if len(batches) == int(row["batches"]):
            self._write(row["out"], [batches[i] for i in sorted(batches)])
            del self.pending[row["out"]]

    def _write(self, out: str, rows: list[dict[str, object]]) -> None:
        dim = int(rows[0]["dim"])
        keys = [k for row in rows for k in str(row["keys"]).split("\n") if k]
        vectors = np.concatenate([np.frombuffer(row["embedding"], np.float16).reshape(-1, dim) for row in rows])
        order = np.argsort(np.array(keys, dtype=object), kind="stable")
        write_embeddings(Path(out), [keys[i] for i in order], vectors[order])
        self.written += 1
        self.images += len(keys)


def embedding_schema(dim: int) -> pa.Schema:
    return pa.schema([("key", pa.string()), ("embedding", pa.list_(pa.float16(), dim))])


def write_embeddings(path: Path, keys: list[str], vectors: np.ndarray) -> None:
    """Atomically write `key` + `embedding` (fixed_size_list<float16>) to `path`."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float16).reshape(-1), type=pa.float16())
    table = pa.table(
        {"key": pa.array(keys, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)},
        schema=embedding_schema(dim),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(table, path)


def read_embeddings(folder: Path) -> tuple[list[str], np.ndarray]:
    """All keys and vectors (float32, N×D) of one role and collection in memory, in shard then key
    order: for the small collections (seed and evaluation sets); the pool goes through
    `embeddings_on_disk`."""
    parts = sorted(folder.glob("*.parquet"))
    keys = _keys(parts)
    vectors = np.empty((len(keys), _width(parts)), np.float32)
    _fill(parts, vectors)
    return keys.to_pylist(), vectors


def embeddings_on_disk(folder: Path, path: Path, keep: pa.Array | None = None) -> tuple[pa.Array, np.ndarray]:
    """Keys (Arrow large strings) and vectors of one role and collection, only the keys in `keep` if
    given, the vectors as a read-only float32 memory map of `path` (an .npy file, written a shard at
    a time unless it is there).

    The pool's vectors are the largest thing dedup, decontam and retrieve touch (4·d bytes an image,
    5 TiB for 1.2B ViT-H vectors): on disk they cost page cache the kernel can evict, not memory
    a process must hold, and search tasks on the same node map the same file.
    """
    parts = sorted(folder.glob("*.parquet"))
    keys, kept = _keys(parts), None
    if keep is not None:
        mask = pc.is_in(keys, value_set=keep.cast(keys.type))
        keys, kept = keys.filter(mask), mask.to_numpy(zero_copy_only=False)
    shape = (len(keys), _width(parts))
    if not shape[0]:  # numpy cannot map an empty file
        return keys, np.zeros(shape, np.float32)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            vectors = np.lib.format.open_memmap(tmp, "w+", np.float32, shape)
            _fill(parts, vectors, kept)
            vectors.flush()
            del vectors
    return keys, np.load(path, mmap_mode="r")


def _width(parts: list[Path]) -> int:
    """The vectors' dimension, from the first part's schema (0 without parts)."""
    return pq.ParquetFile(parts[0]).schema_arrow.field("embedding").type.list_size if parts else 0


def _fill(parts: list[Path], vectors: np.ndarray, kept: np.ndarray | None = None) -> None:
    """Convert each part's fp16 vectors (those `kept`, a mask over all parts' rows, if given) into
    the next rows of `vectors`: converting the whole table at once would hold both copies."""
    read = filled = 0
    for part in parts:
        column = pq.read_table(part, columns=["embedding"]).column("embedding").combine_chunks()
        block = column.values.to_numpy(zero_copy_only=False).reshape(len(column), vectors.shape[1])
        if kept is not None:
            block = block[kept[read : read + len(column)]]
        vectors[filled : filled + len(block)] = block
        read, filled = read + len(column), filled + len(block)


def _keys(parts: list[Path]) -> pa.Array:
    """Every part's keys, in order, as one Arrow array (large strings: a billion keys pass 2 GiB)."""
    arrays = [pq.read_table(p, columns=["key"]).column("key").combine_chunks().cast(pa.large_string()) for p in parts]
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.large_string())


def embedded_keys(folder: Path) -> pa.Array:
    """The keys of one role and collection, in the order the vectors' readers give them."""
    return _keys(sorted(folder.glob("*.parquet")))


KEY_CHUNK = 1 << 20
"""Keys a column chunk of `keys_at` holds: one Arrow string array holds at most 2 GiB of text."""


def keys_at(keys: pa.Array, rows: np.ndarray) -> pa.ChunkedArray:
    """keys[rows] as Arrow strings (the column type output tables have always had), KEY_CHUNK a chunk."""
    chunks = [keys.take(rows[start : start + KEY_CHUNK]).cast(pa.string()) for start in range(0, len(rows), KEY_CHUNK)]
    return pa.chunked_array(chunks, pa.string())


def write_embedder_card(role_dir: Path, spec: EmbedderSpec, embedder: Embedder) -> None:
    """What produced this role's vectors, for readers that must preprocess queries the same way."""
    role_dir.mkdir(parents=True, exist_ok=True)
    card = {"name": spec.name, "dim": embedder.dim, "preprocess": asdict(embedder.preprocess)}
    (role_dir / "embedder.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
