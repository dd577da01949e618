"""Runs the embed stage: a Ray Data actor pool (or an in-process loop) over every ingested shard.

    read tasks (CPU):  shard tar -> fixed batches of preprocessed uint8 crops     (curation.embed.read_batches)
    actor pool:        one model replica per actor (per GPU on GPU nodes)          (curation.embed.EmbedWorker)
    driver:            batches of a shard gathered and written as one parquet file  (curation.embed.ShardCollector)

Each role's model runs as its own pass. Shards whose parquet exists are not re-embedded, so a
killed stage resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from curation import embed, ingest
from foundation.errors import StageError
from foundation.executors import prefetched

READ_TASK_CPUS = 0.5


class BatchOfOneWorker(embed.EmbedWorker):
    """`EmbedWorker` behind Ray Data's `map_batches(batch_size=1)` interface."""

    def __call__(self, batch: dict) -> dict:  # type: ignore[override]
        row = super().__call__({key: values[0] for key, values in batch.items()})
        return {key: [value] for key, value in row.items()}


def read_job(row: dict, preprocess: embed.Preprocess, jpegs: bool):
    yield from embed.read_batches(embed.ShardJob(**row), preprocess, jpegs)


def run_in_process(
    jobs: list[embed.ShardJob],
    worker: embed.EmbedWorker,
    config: embed.EmbedConfig,
    collector: embed.ShardCollector,
    progress: tqdm,
) -> None:
    """Embed every job with `worker` in this process, handing each finished batch to `collector`;
    `config.prefetch` threads read (and decode) the next shards meanwhile."""
    jpegs = config.decode_on_device
    read = lambda job: [worker.decoded(row) for row in embed.read_batches(job, worker.embedder.preprocess, jpegs)]  # noqa: E731
    queued = None
    for rows in prefetched(read, jobs, config.prefetch):
        for row in rows:
            # Queue this batch before reading the last one's vectors and writing its shard,
            # so the device always has a forward to run while the host does that.
            queued, previous = worker.launch(row), queued
            if previous:
                collect(previous.result(), collector, progress)
    if queued:
        collect(queued.result(), collector, progress)


def run_on_ray(
    jobs: list[embed.ShardJob],
    spec: embed.EmbedderSpec,
    config: embed.EmbedConfig,
    collector: embed.ShardCollector,
    preprocess: embed.Preprocess,
    progress: tqdm,
) -> None:
    """Embed every job on a Ray Data actor pool (read tasks make batches with `preprocess`), handing
    each finished batch to `collector`."""
    import ray

    from foundation.ray_session import connect_ray

    connect_ray()
    # Actors must leave CPU for the read tasks, or a CPU-only cluster with as many actors as cores
    # schedules no reader and waits forever.
    actor_cpus = min(1.0, (ray.cluster_resources().get("CPU", 1.0) - READ_TASK_CPUS) / config.actors)
    if actor_cpus <= 0:
        raise StageError(f"embed.actors={config.actors} leaves no CPU for reading shards; use fewer actors")
    device, threads = placement(config)
    jpegs = config.decode_on_device
    dataset = (
        ray.data.from_items([asdict(job) for job in jobs], override_num_blocks=max(1, len(jobs)))
        .flat_map(read_job, fn_kwargs={"preprocess": preprocess, "jpegs": jpegs}, num_cpus=READ_TASK_CPUS)
        .map_batches(
            BatchOfOneWorker,
            fn_constructor_kwargs={"spec": spec, "device": device, "threads": threads},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_gpus=config.gpus_per_actor,
            num_cpus=actor_cpus,
            batch_format="numpy",
        )
    )
    for row in dataset.iter_rows():
        collect(row, collector, progress)


def local_worker(spec: embed.EmbedderSpec, config: embed.EmbedConfig) -> embed.EmbedWorker:
    """The model replica an in-process run embeds with."""
    return embed.EmbedWorker(spec, *placement(config))


def placement(config: embed.EmbedConfig) -> tuple[str, int]:
    """Each model replica's device, and its torch CPU threads (the cores shared among the actors)."""
    threads = config.threads_per_actor or max(1, (os.cpu_count() or 1) // config.actors)
    return ("cuda" if config.gpus_per_actor > 0 else "cpu"), threads


def collect(row: dict, collector: embed.ShardCollector, progress: tqdm) -> None:
    """Hand an embedded batch to `collector`; the bar counts the shards it has written."""
    before = collector.written
    collector.add(row)
    progress.update(collector.written - before)


def embed_all(config: embed.EmbedConfig, ingest_dir: Path, out_dir: Path, use_ray: bool) -> dict[str, int]:
    """Embed the pool and every reference set with each role's model into `out_dir/<role>/`."""
    counts: dict[str, int] = {}
    for role, spec in config.models.items():
        embed_role(role, spec, config, ingest_dir, out_dir / role, use_ray)
        counts.update(check_complete(ingest_dir, out_dir / role, role))
    return counts


def embed_role(
    role: str, spec: embed.EmbedderSpec, config: embed.EmbedConfig, ingest_dir: Path, role_dir: Path, use_ray: bool
) -> None:
    """One role's model over every shard not yet embedded (its model is freed before the next role's is built)."""
    jobs, done = embed.pending_jobs(ingest_dir, role_dir, spec.batch_size)
    # In process, the model that embeds describes itself. A Ray driver builds a CPU copy to do
    # that (and to fail on bad weights in one line here, not in every actor), then lets it go: a
    # ViT-g's weights are gigabytes the head would hold for the whole stage.
    worker = None if use_ray else local_worker(spec, config)
    embedder = worker.embedder if worker else spec.build("cpu")
    embed.write_embedder_card(role_dir, spec, embedder)
    preprocess = embedder.preprocess
    del embedder
    collector = embed.ShardCollector()
    with tqdm(total=len(jobs) + done, initial=done, desc=f"embed {role}", unit="shard", file=sys.stderr) as bar:
        if worker:
            run_in_process(jobs, worker, config, collector, bar)
        else:
            run_on_ray(jobs, spec, config, collector, preprocess, bar)


def check_complete(ingest_dir: Path, role_dir: Path, role: str) -> dict[str, int]:
    """Per collection, as many vectors as ingested images, shard by shard, or a StageError: nothing
    is silently lost. A shard's tar that yields fewer images than ingest wrote into it (a zeroed
    block reads as the archive's end) changed on storage since; no re-run of this stage fixes that."""
    counts = {}
    for name, folder in ingest.collections(ingest_dir).items():
        expected = images_per_shard(folder / "index.parquet")
        got = {p.stem: pq.ParquetFile(p).metadata.num_rows for p in (role_dir / name).glob("*.parquet")}
        short = sorted(stem for stem in expected.keys() & got.keys() if got[stem] != expected[stem])
        if short:
            raise StageError(
                f"embed {role}/{name}: {folder / short[0]}.tar gave {got[short[0]]} of the "
                f"{expected[short[0]]} images ingest wrote into it ({len(short)} such shards); the shard "
                "has changed since ingest wrote it (`lvd verify RUN` names every damaged shard): "
                "re-run from ingest (--from ingest)"
            )
        ingested = sum(expected.values())
        if sum(got.values()) != ingested:
            raise StageError(
                f"embed {role}/{name}: {sum(got.values())} vectors for {ingested} ingested images; re-run to finish"
            )
        counts[f"{role}.{name}"] = ingested
    return counts


def images_per_shard(index: Path) -> Counter[str]:
    """Images per shard name (`000042`) of an ingest index, streaming its `shard` column: one entry
    per shard is held, not one per image."""
    counts: Counter[str] = Counter()
    for batch in pq.ParquetFile(index, pre_buffer=False).iter_batches(1 << 20, columns=["shard"]):
        counts.update({f"{e['values']:06d}": e["counts"] for e in pc.value_counts(batch.column(0)).to_pylist()})
    return counts


def summary_line(counts: dict[str, int]) -> str:
    roles = sorted({key.split(".", 1)[0] for key in counts})
    parts = []
    for role in roles:
        pool = counts.get(f"{role}.{ingest.POOL}", 0)
        references = sum(v for k, v in counts.items() if k.startswith(f"{role}.") and k != f"{role}.{ingest.POOL}")
        parts.append(f"{role}: {pool} pool + {references} reference images")
    return "embed: " + "; ".join(parts)
