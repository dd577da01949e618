"""The memory that grows with the data in one process: per pool image, per kNN edge, per input listed.

    python benchmarks/memory.py [--sizes 200000 400000] [--dim 128] [--record]

Four stages' drivers hold something per image of the whole pool, so they set the size of the
machine a stage needs whatever the fleet (`--plan` states it):
- dedup: the stage's driver (`dedup.run_dedup`, kNN mode, IVF-PQ as configs/curation/lvd142m.yaml
  has it, search tasks run in the same process) over planted unit vectors; the bare figure is the
  float32 vector's own 4·d bytes, what the stage held per image before the vectors moved into a
  memory-mapped scratch file;
- decontam: the stage's driver (`decontam.run_decontam`) over the same pool, every image its own
  dedup component, against an eval set of SEEDS images;
- the kNN graph: dedup again, over two pools of the larger size made only of groups of copies (17
  and 65 a group: 8 and 32 edges an image), whose difference is all edges; bare: an edge's two
  int64 rows;
- retrieve: the stage's driver (`retrieve.run_retrieve`) with a `sample` and a `cluster` row over
  the same planted pool; and apart, with one `balanced` row (its hierarchical k-means holds a
  label, a similarity and a sort of the labels per image);
- listing: ingest's driver lists every input before any work (`ingest.list_inputs`, here of a
  folder source of empty files under 45-character paths); the bare figure is the path's bytes;
- urls: the same for a URL source (a list of 70-character URLs, each twice, deduplicated and
  written out for img2dataset, and img2dataset's records of every shard already fetched, so that
  nothing downloads); the bare figure is the URL's bytes.
Each size runs in a fresh child process, and this process polls the child's anonymous resident
memory (RssAnon, Linux) every millisecond: pages of a memory-mapped file are the kernel's to evict,
so they are not memory the machine must have. The growth of that peak over the child's memory after
its imports, as a slope between the two sizes, is the cost of one more item: thread pools, allocator
arenas and imports drop out. The child shrinks the stages' fixed-size buffers and training samples
(CHUNK, TRAIN, BATCHES): at full size they are larger than a few hundred thousand images' state,
the peak falls in them at both sizes, and the slope reads noise; and its allocators give memory
back as soon as it is freed (LIVE_MEMORY). `--plan` adds the training samples at their configured
sizes. Recorded (--record): dedup.driver_bytes_per_image and
retrieve.driver_bytes_per_image, retrieve.balanced_bytes_per_image and
decontam.driver_bytes_per_image at d@DIM,
dedup.driver_bytes_per_edge and
ingest.listing_bytes_per_input (subjects `ingest`, a folder source, and `urls`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from curation.knn import IndexSpec
    from curation.retrieve import RetrieveConfig

PARTS = 10_000  # rows an embedding file holds, as an ingest shard's
CHUNK = 5_000  # query rows a search task holds: small, so that the per-image state shows beside it
TRAIN = 20_000  # vectors an index trains on, and k-means clusters x 256 below: fixed samples, as small
BATCHES = {  # the stage's other fixed-size buffers, as small, for the same reason
    "curation.dedup": {"EDGE_BATCH": 1 << 14, "EDGE_FILE_ROWS": 1 << 16},
    "curation.knn": {"ADD_BATCH": 1 << 14, "PAIR_BATCH": 1 << 12},
    "curation.embed": {"KEY_CHUNK": 1 << 14},
    "curation.sources": {"URL_BATCH": 1 << 14, "URL_FILE_ROWS": 1 << 16},
    "curation.ingest": {"SORT_BATCH": 1 << 14},
}


def write_pool(folder: Path, vectors: np.ndarray) -> None:
    """An ingest index, the copy role's pool embeddings, and dedup and decontam stages that kept
    them all, as those stages write them; and SEEDS pool images again as a seed and an eval set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.embed import write_embeddings

    n = len(vectors)
    keys = [f"{key:016x}" for key in range(n)]
    for part, start in enumerate(range(0, n, PARTS)):
        rows = slice(start, start + PARTS)
        write_embeddings(folder / "embed" / "copy" / "pool" / f"{part:06d}.parquet", keys[rows], vectors[rows])
    seeds = vectors[:: max(1, n // SEEDS)][:SEEDS]
    for collection in ("seeds", "eval/evals"):
        write_embeddings(
            folder / "embed" / "copy" / collection / "000000.parquet", [f"s{i}" for i in range(len(seeds))], seeds
        )
    for stage in ("ingest", "dedup", "decontam"):
        (folder / stage).mkdir()
    components = pa.table({"key": keys, "component": np.arange(n)})
    pq.write_table(components, folder / "dedup" / "keep.parquet")
    pq.write_table(components.slice(0, 0), folder / "dedup" / "removed.parquet")
    sizes = np.full(n, 256, np.int32)
    pq.write_table(pa.table({"key": keys, "width": sizes, "height": sizes}), folder / "ingest" / "index.parquet")
    pq.write_table(pa.table({"key": keys}), folder / "decontam" / "keep.parquet")


def url(row: int) -> str:
    """A URL as long as a typical crawled one (70 characters)."""
    return f"https://images.example-cdn.com/photos/2024/{row:012d}/original.jpg"


def write_downloaded_urls(folder: Path, n: int) -> None:
    """A list of `n` URLs, each twice, and img2dataset's record of having fetched every one of them
    (a parquet and a stats file a shard of 1000), so that the measured listing downloads nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = [url(row) for row in range(n)]
    pq.write_table(pa.table({"url": urls + urls}), folder / "urls.parquet")
    download = folder / "download"
    download.mkdir()
    for shard, start in enumerate(range(0, n, 1000)):
        rows = urls[start : start + 1000]
        keys = [f"{shard:05d}{i:04d}" for i in range(len(rows))]
        done = pa.table(
            {"url": rows, "key": keys, "status": ["success"] * len(rows), "error_message": [None] * len(rows)}
        )
        pq.write_table(done, download / f"{shard:05d}.parquet")
        (download / f"{shard:05d}_stats.json").write_text("{}")


SEEDS = 1_000  # a seed set's images: the retrieve rows' work is per seed, the same at every pool size


def ivf_pq() -> IndexSpec:
    """The index lvd142m.yaml has every stage build, trained on TRAIN vectors."""
    from curation.knn import IndexSpec

    return IndexSpec(kind="ivf_pq", device="cpu", train_size=TRAIN)


def retrieve_config(kind: str) -> RetrieveConfig:
    """`retrieve`: a `sample` row and a `cluster` row (lvd142m.yaml has both kinds), IVF-PQ as there;
    `balanced`: one `balanced` row, as many leaves as `cluster` has clusters."""
    from curation.retrieve import Balanced, Cluster, RetrieveConfig, Sample, SeedSet

    rows = [
        SeedSet(name="sample", strategy=Sample(n=4)),
        SeedSet(name="cluster", strategy=Cluster(images_per_cluster=50)),
    ]
    if kind == "balanced":
        rows = [SeedSet(name="balanced", strategy=Balanced(images=SEEDS, levels=[TRAIN // 256, 10]))]
    return RetrieveConfig(sources=rows, clusters=TRAIN // 256, role="copy", index=ivf_pq(), chunk_size=CHUNK)


def measure(kind: str, folder: Path) -> dict[str, float]:
    """In the child: do the work on `folder`; its item count, bare bytes and RssAnon after imports."""
    import pyarrow.parquet as pq

    from curation.decontam import DecontamConfig, EvalSet, run_decontam
    from curation.dedup import DedupConfig, run_dedup
    from curation.ingest import list_inputs
    from curation.retrieve import run_retrieve
    from curation.sources import FolderSource, UrlSource
    from curation.synth.crawl import EMPTY_PHOTO
    from foundation.executors import serial_map

    for module, sizes in BATCHES.items():
        for name, value in sizes.items():
            setattr(sys.modules[module], name, value)
    after_imports = rss_anon(Path("/proc/self/status").read_text())
    if kind == "dedup":
        config = DedupConfig(index=ivf_pq(), chunk_size=CHUNK)
        counts = run_dedup(config, folder / "ingest", folder / "embed", folder / "dedup", serial_map)
        edges = sum(pq.read_metadata(part).num_rows for part in (folder / "dedup" / "edges").glob("*.parquet"))
        return {"items": counts["images"], "after_imports": after_imports, "edges": edges}
    if kind == "decontam":
        config = DecontamConfig(eval_sets=[EvalSet(name="evals", path=str(folder))], index=ivf_pq())
        counts = run_decontam(config, folder / "embed", folder / "dedup", folder / "decontam_run")
        return {"items": counts["images"], "after_imports": after_imports}
    if kind in ("retrieve", "balanced"):
        collections = {"sample": "seeds", "cluster": "seeds"}
        counts = run_retrieve(
            retrieve_config(kind), folder / "embed", folder / "decontam", collections, folder / "retrieve", serial_map
        )
        return {"items": counts["pool"], "after_imports": after_imports}
    if kind == "urls":
        inputs = list_inputs([UrlSource(path=folder / "urls.parquet")], 1000, folder)
        return {"items": inputs, "after_imports": after_imports, "bare": inputs * len(url(0))}
    inputs = list_inputs([FolderSource(path=folder / "photos")], 1000, folder)
    return {"items": inputs, "after_imports": after_imports, "bare": inputs * len(str(folder / EMPTY_PHOTO))}


def rss_anon(status: str) -> int:
    """RssAnon from a /proc/PID/status text, in bytes (0 once the process has exited)."""
    line = next((line for line in status.splitlines() if line.startswith("RssAnon:")), "RssAnon: 0 kB")
    return int(line.split()[1]) * 1024


LIVE_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "131072",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}
"""The child's allocators give freed memory back at once (glibc maps every block over 128 KiB and
trims its heap; Arrow allocates from it): what one allocator keeps after a phase, and when it
gives it back, varies from run to run, and read as 51 to 161 bytes an image for the same dedup
code. With these the peak is live memory, and three runs agree within 2%."""


def peak_in_child(kind: str, folder: Path) -> dict[str, float]:
    """`measure` in a fresh process, with the highest RssAnon this process saw it hold."""
    command = [sys.executable, __file__, "--measure", kind, str(folder)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **LIVE_MEMORY})
    status, peak = Path(f"/proc/{child.pid}/status"), 0
    while child.poll() is None:
        try:
            peak = max(peak, rss_anon(status.read_text()))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.001)
    out, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"measuring {kind} in {folder} failed (exit {child.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak": peak}


def slope(kind: str, sizes: list[int], dim: int) -> tuple[float, float]:
    """Bytes one more item costs, and its bare bytes, between the two sizes."""
    from curation.synth.crawl import empty_photos
    from curation.synth.vectors import planted_vectors

    found = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "listing":
                empty_photos(Path(tmp), n)
            elif kind == "urls":
                write_downloaded_urls(Path(tmp), n)
            else:
                write_pool(Path(tmp), planted_vectors(n, dim))
            found.append(peak_in_child(kind, Path(tmp)))
    items = found[1]["items"] - found[0]["items"]
    grown = [f["peak"] - f["after_imports"] for f in found]
    bare = [f["bare"] if kind in ("listing", "urls") else 4 * dim * f["items"] for f in found]
    return (grown[1] - grown[0]) / items, (bare[1] - bare[0]) / items


GROUPS = (17, 65)  # copies a group: 8 and 32 kNN edges an image at k = 64, nearly all of the pool removed in both


def edge_cost(n: int, dim: int) -> tuple[float, float]:
    """Bytes one more kNN edge costs the dedup driver, and the bare 16 bytes of its two int64 rows:
    two pools of `n` images, all in groups of copies, that differ in group size and so in edges
    (and in almost nothing else)."""
    from curation.synth.vectors import grouped_vectors

    found = []
    for group in GROUPS:
        with tempfile.TemporaryDirectory() as tmp:
            write_pool(Path(tmp), grouped_vectors(n, dim, group))
            found.append(peak_in_child("dedup", Path(tmp)))
    edges = found[1]["edges"] - found[0]["edges"]
    grown = (found[1]["peak"] - found[1]["after_imports"]) - (found[0]["peak"] - found[0]["after_imports"])
    print(f"edges at groups of {GROUPS}: {found[0]['edges']:,} and {found[1]['edges']:,} over {n:,} images")
    return grown / edges, 16.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[200_000, 400_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--record", action="store_true", help="append both slopes to benchmarks/results.jsonl")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # KIND FOLDER: one size, in a child
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    deduped, vector_bare = slope("dedup", args.sizes, args.dim)
    retrieved, _ = slope("retrieve", args.sizes, args.dim)
    balanced, _ = slope("balanced", args.sizes, args.dim)
    decontaminated, _ = slope("decontam", args.sizes, args.dim)
    listed, listed_bare = slope("listing", args.sizes, args.dim)
    urls, url_bare = slope("urls", args.sizes, args.dim)
    per_edge, edge_bare = edge_cost(args.sizes[1], args.dim)
    print(
        f"an image deduplicated (d={args.dim}): {deduped:7,.0f} bytes; its float32 vector {vector_bare:5,.0f}; "
        f"ratio {vector_bare / deduped:.2f}"
    )
    print(
        f"an image retrieved from (d={args.dim}): {retrieved:7,.0f} bytes; its float32 vector {vector_bare:5,.0f}; "
        f"ratio {vector_bare / retrieved:.2f}"
    )
    print(
        f"an image sampled by balanced (d={args.dim}): {balanced:4,.0f} bytes; its float32 vector {vector_bare:5,.0f}; "
        f"ratio {vector_bare / balanced:.2f}"
    )
    print(
        f"an image decontaminated (d={args.dim}): {decontaminated:5,.0f} bytes; its float32 vector {vector_bare:5,.0f}; "
        f"ratio {vector_bare / decontaminated:.2f}"
    )
    print(
        f"a kNN edge deduplicated:         {per_edge:7,.1f} bytes; its two rows        {edge_bare:5,.0f}; "
        f"ratio {edge_bare / per_edge:.2f}"
    )
    print(
        f"an input listed:                 {listed:7,.0f} bytes; its path           {listed_bare:5,.0f}; "
        f"ratio {listed_bare / listed:.2f}"
    )
    print(
        f"a URL listed (each twice):       {urls:7,.0f} bytes; the URL             {url_bare:5,.0f}; "
        f"ratio {url_bare / urls:.2f}"
    )
    if args.record:
        from curation.measurements import record

        record("benchmarks/memory.py", "dedup.driver_bytes_per_image", deduped, "bytes", f"d@{args.dim}")
        record("benchmarks/memory.py", "retrieve.driver_bytes_per_image", retrieved, "bytes", f"d@{args.dim}")
        record("benchmarks/memory.py", "retrieve.balanced_bytes_per_image", balanced, "bytes", f"d@{args.dim}")
        record("benchmarks/memory.py", "decontam.driver_bytes_per_image", decontaminated, "bytes", f"d@{args.dim}")
        record("benchmarks/memory.py", "dedup.driver_bytes_per_edge", per_edge, "bytes", "dedup")
        record("benchmarks/memory.py", "ingest.listing_bytes_per_input", listed, "bytes", "ingest")
        record("benchmarks/memory.py", "ingest.listing_bytes_per_input", urls, "bytes", "urls")


if __name__ == "__main__":
    main()
