"""The stages after dedup (decontam, retrieve, curated), each as a ratio to the bare operation it
wraps, and the rates `--plan` extrapolates them from.

    python benchmarks/downstream.py [--images 6000] [--clusters 64] [--repeats 3] [--record]

A synthetic crawl is curated once; then each stage is run again alone (forced, same inputs) and
timed against its bare operation on the same data:
- decontam: the stage against a bare Faiss index over the pool plus the search of every eval image;
- retrieve: the stage's k-means (`PoolClusters.fit`, what the cluster rows cost at scale) against
  bare `faiss.Kmeans` training and assignment with the same clusters and iterations; the whole
  stage's time is printed beside it (at this size its fixed costs, reading the pool and the sample
  rows' index, outweigh the k-means);
- curated: the stage with one worker process against bare reading of the curated images at their
  ingest offsets and writing them into one tar, in one process; then the stage again with a worker
  per core, to show how it spreads. A `balanced` row is added to the crawl's config so that
  thousands of images are curated, not the demo's few dozen, in shards of 250.
Recorded rates: decontam.pool_images_per_s; retrieve.kmeans_point_clusters_per_s, i.e.
(iterations x training points + pool) x clusters per second, faiss training on at most 256 points
per centroid; assemble.images_per_s_per_worker (one worker). Each figure is the median of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import pyarrow.parquet as pq
import yaml

from curation.embed import read_embeddings
from curation.ingest import POOL
from curation.knn import build_index, neighbours_above
from curation.measurements import record
from curation.pipeline import curate
from curation.retrieve import Pool, PoolClusters
from curation.run_config import CurationConfig, load_curation_config
from curation.shards import ShardWriter, read_at
from curation.synth.crawl import make_crawl

MAX_POINTS_PER_CENTROID = 256  # faiss.Kmeans' default: training samples at most this many per cluster


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bare_decontam(run: Path, config: CurationConfig) -> None:
    _, vectors = read_embeddings(run / "embed" / config.decontam.role / POOL)
    index = build_index(vectors, config.decontam.index)
    for eval_set in config.decontam.eval_sets:
        _, queries = read_embeddings(run / "embed" / config.decontam.role / "eval" / eval_set.name)
        neighbours_above(index, config.decontam.index, vectors, queries, config.decontam.k, config.decontam.threshold)


def bare_kmeans(pool: Pool, clusters: int, iterations: int) -> None:
    kmeans = faiss.Kmeans(pool.vectors.shape[1], clusters, niter=iterations, seed=0, spherical=True)
    kmeans.train(pool.vectors)
    kmeans.index.search(pool.vectors, 1)


def bare_assemble(run: Path, out: Path) -> None:
    """The curated pool images, read at the offsets in ingest's index, into one tar."""
    index = pq.read_table(run / "ingest" / "index.parquet", columns=["key", "shard", "offset", "bytes"]).to_pylist()
    curated = set(pq.read_table(run / "curated" / "index.parquet", columns=["key"])["key"].to_pylist())
    by_shard: dict[int, dict[str, tuple[int, int]]] = {}
    for row in index:
        if row["key"] in curated:
            by_shard.setdefault(row["shard"], {})[f"{row['key']}.jpg"] = (row["offset"], row["bytes"])
    with ShardWriter(out) as writer:
        for shard, members in sorted(by_shard.items()):
            for name, data in sorted(read_at(run / "ingest" / f"{shard:06d}.tar", members).items()):
                writer.write(name.removesuffix(".jpg"), {"jpg": data})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--clusters", type=int, default=64, help="retrieve.clusters (the demo's 16 is too few)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the measured rates to benchmarks/results.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        crawl = make_crawl(Path(tmp) / "crawl", images=args.images, seed=0)
        tree = yaml.safe_load((crawl / "curation.yaml").read_text())
        balanced = {"kind": "balanced", "images": args.images // 2, "levels": [args.clusters, 8]}
        tree["retrieve"]["sources"].append({"name": "web_balanced", "strategy": balanced})
        (crawl / "benchmark.yaml").write_text(yaml.safe_dump(tree))
        overrides = [f"retrieve.clusters={args.clusters}", "assemble.shard_size=250", "assemble.workers=1"]
        config = load_curation_config(crawl / "benchmark.yaml", overrides)
        spread = config.model_copy(update={"assemble": config.assemble.model_copy(update={"workers": os.cpu_count()})})
        run = Path(tmp) / "run"
        curate(config, run, executor="local")
        pool = Pool.load(run / "embed", config.retrieve.role, run / "decontam", Path(tmp) / "pool.npy")
        stage, bare = {}, {}
        stage_ops = {
            name: (lambda n=name: curate(config, run, (n,), start_from=n, executor="local"))
            for name in ("decontam", "curated")
        }
        stage_ops["kmeans"] = lambda: PoolClusters.fit(pool, args.clusters, config.retrieve.kmeans_iterations, seed=0)
        whole_retrieve = statistics.median(
            timed(lambda: curate(config, run, ("retrieve",), start_from="retrieve", executor="local"))
            for _ in range(args.repeats)
        )
        spread_curated = statistics.median(
            timed(lambda: curate(spread, run, ("curated",), start_from="curated", executor="local"))
            for _ in range(args.repeats)
        )
        for name, bare_op in (
            ("decontam", lambda: bare_decontam(run, config)),
            ("kmeans", lambda: bare_kmeans(pool, args.clusters, config.retrieve.kmeans_iterations)),
            ("curated", lambda: bare_assemble(run, Path(tmp) / "bare.tar")),
        ):
            runs = [(timed(stage_ops[name]), timed(bare_op)) for _ in range(args.repeats)]  # interleaved
            stage[name] = statistics.median(s for s, _ in runs)
            bare[name] = statistics.median(b for _, b in runs)
        curated = pq.ParquetFile(run / "curated" / "index.parquet").metadata.num_rows
    points = min(len(pool.keys), MAX_POINTS_PER_CENTROID * args.clusters)
    kmeans_ops = (config.retrieve.kmeans_iterations * points + len(pool.keys)) * args.clusters
    print(f"pool {len(pool.keys)} images after dedup and decontam, {curated} curated, {args.clusters} clusters")
    for name in stage:
        print(f"{name:<9} stage {stage[name]:7.2f} s   bare {bare[name]:7.2f} s   ratio {bare[name] / stage[name]:.2f}")
    print(f"retrieve, the whole stage: {whole_retrieve:.2f} s (k-means {stage['kmeans']:.2f} s of it)")
    print(
        f"curated with {os.cpu_count()} workers: {spread_curated:.2f} s, "
        f"{stage['curated'] / spread_curated:.2f}x the one-worker stage"
    )
    rates = {  # metric: (value, unit, subject); a subject's @ names the size --plan extrapolates from
        "decontam.pool_images_per_s": (len(pool.keys) / stage["decontam"], "images/s", f"decontam@{len(pool.keys)}"),
        "retrieve.kmeans_point_clusters_per_s": (
            kmeans_ops / stage["kmeans"],
            "point-clusters/s",
            f"d@{pool.vectors.shape[1]}",
        ),
        "assemble.images_per_s_per_worker": (curated / stage["curated"], "images/s", "assemble"),
    }
    for metric, (value, unit, subject) in rates.items():
        print(f"{metric} [{subject}]: {value:,.0f} {unit}")
        if args.record:
            record("benchmarks/downstream.py", metric, value, unit, subject)


if __name__ == "__main__":
    main()
