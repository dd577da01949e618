"""The curation pipeline: its stages in order, what each hashes and reads, and how a run goes.

`curate(config, run_dir)` runs every stage into a run directory; a stage whose output is already
there for the same hash (its config section plus the hashes of the stages it reads) is skipped,
so re-running the same command after a kill finishes the work. Each stage's name is its module's
`STAGE`. How a stage's shards are spread (in-process, local processes, Ray tasks) is chosen here
from `executor`; the stages themselves take a `map_fn` and never import Ray.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from curation import assemble, decontam, dedup, embed, ingest, report, retrieve
from curation.run_config import CurationConfig
from curation.rundir import RunDir, StageWork, require_new_stage_dir, stage_hash
from foundation.errors import StageError
from foundation.executors import process_map, ray_map, serial_map


def uses_ray(executor: str) -> bool:
    """`ray` when asked, or `auto` under `ray job submit` (RAY_ADDRESS set)."""
    return executor == "ray" or (executor == "auto" and bool(os.environ.get("RAY_ADDRESS")))


def choose_map(executor: str, workers: int | None, task_cpus: int = 1) -> Callable:
    """Ray tasks of `task_cpus` CPUs each when `uses_ray`, else `workers` local processes at a time
    (None: in this process)."""
    if uses_ray(executor):
        return ray_map(num_cpus=task_cpus)
    return serial_map if workers is None else process_map(workers)


@dataclass(frozen=True)
class Stage:
    """A stage of the run: what its hash covers, which stages it reads, how it runs and reports."""

    name: str
    section: Callable[[CurationConfig], Any]
    upstream: tuple[str, ...]
    body: Callable[[CurationConfig, RunDir, StageWork, str], dict[str, int]]
    summary: Callable[[dict[str, int]], str]


def ingest_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    with tqdm(desc="ingest shards", unit="shard", file=sys.stderr) as bar:
        map_fn = choose_map(executor, config.ingest.workers)
        return ingest.run_ingest(config.ingest, work, map_fn, bar.update, config.reference_sets())


def embed_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    from curation.embed_runner import embed_all  # torch and Ray load only when a run embeds

    return embed_all(config.embed, run.stage_path(ingest.STAGE), work.path, uses_ray(executor))


def embed_summary(counts: dict[str, int]) -> str:
    from curation.embed_runner import summary_line

    return summary_line(counts)


def dedup_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    # Locally one process searches the chunks (Faiss already uses every core); on Ray, chunks spread
    # as tasks of `threads` CPUs, each holding its own copy of fast-scan codes (knn.MAP_FLAG).
    return dedup.run_dedup(
        config.dedup,
        run.stage_path(ingest.STAGE),
        run.stage_path(embed.STAGE),
        work.path,
        choose_map(executor, workers=None, task_cpus=config.dedup.threads or 1),
        seed=config.run.seed,
    )


def decontam_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    return decontam.run_decontam(
        config.decontam, run.stage_path(embed.STAGE), run.stage_path(dedup.STAGE), work.path, seed=config.run.seed
    )


def retrieve_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    seeded = [row for row in config.retrieve.sources if row.strategy.kind != "balanced"]
    missing = [row.name for row in seeded if row.path is None]
    if missing:
        raise StageError(f"source rows {missing} have no path to their seed images; set retrieve.sources.N.path")
    collections = {row.name: config.seed_collection(row.name) for row in seeded}
    return retrieve.run_retrieve(
        config.retrieve,
        run.stage_path(embed.STAGE),
        run.stage_path(decontam.STAGE),
        collections,
        work.path,
        choose_map(executor, workers=None, task_cpus=config.retrieve.threads or 1),
        seed=config.run.seed,
    )


def assemble_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    rows = {row.name: row.strategy.kind for row in config.retrieve.sources}
    with tqdm(desc="curated images", unit="image", file=sys.stderr) as bar:
        counts = assemble.run_assemble(
            config.assemble,
            run.stage_path(ingest.STAGE),
            run.stage_path(retrieve.STAGE),
            rows,
            work.path,
            choose_map(executor, config.assemble.workers),
            bar.update,
            seed=config.run.seed,
        )
    upstream = [run.stage_record(stage.STAGE)["counts"] for stage in (ingest, dedup, decontam)]
    counts.update(assemble.account(*upstream, counts["curated.pool"]))
    return counts


def report_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    from curation.report.render import write_report  # matplotlib and jinja2 load only here

    stats = write_report(run.root, work.path)
    return {
        "inputs": stats["inputs"],
        "curated": stats["curated"]["images"],
        "html_bytes": (work.path / "index.html").stat().st_size,
    }


def report_summary(counts: dict[str, int]) -> str:
    return (
        f"report: {counts['inputs']} crawled -> {counts['curated']} curated; "
        f"index.html ({counts['html_bytes'] / 1e6:.1f} MB) and stats.json in the run's report/"
    )


PIPELINE = (
    Stage(
        ingest.STAGE,
        lambda c: {"ingest": c.ingest, "references": c.reference_sets(), "keys": ingest.KEY_SCHEME},
        (),
        ingest_body,
        ingest.summary_line,
    ),
    Stage(embed.STAGE, lambda c: c.embed, (ingest.STAGE,), embed_body, embed_summary),
    Stage(dedup.STAGE, lambda c: c.dedup, (ingest.STAGE, embed.STAGE), dedup_body, dedup.summary_line),
    Stage(decontam.STAGE, lambda c: c.decontam, (embed.STAGE, dedup.STAGE), decontam_body, decontam.summary_line),
    Stage(
        retrieve.STAGE,
        lambda c: {"retrieve": c.retrieve, "seed": c.run.seed},
        (embed.STAGE, decontam.STAGE),
        retrieve_body,
        retrieve.summary_line,
    ),
    Stage(
        assemble.STAGE,
        lambda c: {"assemble": c.assemble, "seed": c.run.seed, "index": assemble.INDEX_LAYOUT},
        (ingest.STAGE, dedup.STAGE, decontam.STAGE, retrieve.STAGE),
        assemble_body,
        assemble.summary_line,
    ),
    Stage(
        report.STAGE,
        lambda c: {},
        (ingest.STAGE, dedup.STAGE, decontam.STAGE, retrieve.STAGE, assemble.STAGE),
        report_body,
        report_summary,
    ),
)
STAGES = tuple(stage.name for stage in PIPELINE)


def stages_up_to(last: str | None) -> tuple[str, ...]:
    """Every stage through `last` (all of them for None): `--to dedup` stops after dedup."""
    return STAGES if last is None else STAGES[: STAGES.index(last) + 1]


def run_stage(
    stage: Stage, config: CurationConfig, run: RunDir, executor: str = "auto", force: bool = False
) -> dict[str, int]:
    """Run one stage into its folder (or skip it when done for the same hash); returns its counts."""
    upstream = {name: run.require_done(name)["hash"] for name in stage.upstream}
    hash_ = stage_hash(stage.name, stage.section(config), upstream)
    if run.is_done(stage.name, hash_) and not force:
        counts = run.stage_record(stage.name)["counts"]
        print(stage.summary(counts) + " (already done; skipped)")
        return counts
    with run.stage(stage.name, hash_) as work:
        work.counts = stage.body(config, run, work, executor)
    print(stage.summary(work.counts))
    return work.counts


def curate(
    config: CurationConfig,
    run_dir: Path,
    stages: tuple[str, ...] = STAGES,
    start_from: str | None = None,
    executor: str = "auto",
) -> RunDir:
    """Run `stages` in order into `run_dir`; stages from `start_from` on run even if done."""
    require_new_stage_dir(run_dir)
    run = RunDir(run_dir)
    run.record_config(config)
    forcing = False
    for stage in PIPELINE:
        forcing = forcing or stage.name == start_from
        if stage.name in stages:
            run_stage(stage, config, run, executor=executor, force=forcing)
    return run
