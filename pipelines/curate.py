"""`python -m pipelines.curate CONFIG [key=value ...]`: run a curation recipe into a run directory.

This is what `ray job submit -- python -m pipelines.curate CONFIG` runs on a cluster, and what
`lvd curate`/`lvd ingest` call locally. Stages whose output is already in the run directory for
the same per-stage config hash are skipped, so re-running the same command after a kill finishes
the work; `--from STAGE` forces a stage and everything after it to run again.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from curation import assemble, decontam, dedup, ingest, retrieve
from curation.errors import StageError
from curation.run_config import CurationConfig, load_curation_config
from curation.rundir import RunDir, StageWork, require_new_stage_dir, stage_hash
from pipelines.entry import exit_code_of
from pipelines.executors import process_map, ray_map, serial_map


def uses_ray(executor: str) -> bool:
    """`ray` when asked, or `auto` under `ray job submit` (RAY_ADDRESS set)."""
    return executor == "ray" or (executor == "auto" and bool(os.environ.get("RAY_ADDRESS")))


def choose_map(executor: str, workers: int | None) -> Callable:
    """Ray tasks when `uses_ray`, else `workers` local processes at a time (None: in this process)."""
    if uses_ray(executor):
        return ray_map()
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
    from pipelines.embed_runner import embed_all  # torch and Ray load only when a run embeds

    return embed_all(config.embed, run.stage_path("ingest"), work.path, uses_ray(executor))


def embed_summary(counts: dict[str, int]) -> str:
    from pipelines.embed_runner import summary_line

    return summary_line(counts)


def dedup_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    # Locally one process searches the chunks (Faiss already uses every core); on Ray, chunks spread.
    return dedup.run_dedup(
        config.dedup,
        run.stage_path("ingest"),
        run.stage_path("embed"),
        work.path,
        choose_map(executor, workers=None),
        seed=config.run.seed,
    )


def decontam_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    return decontam.run_decontam(
        config.decontam, run.stage_path("embed"), run.stage_path("dedup"), work.path, seed=config.run.seed
    )


def retrieve_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    seeded = [row for row in config.retrieve.sources if row.strategy.kind != "balanced"]
    missing = [row.name for row in seeded if row.path is None]
    if missing:
        raise StageError(f"source rows {missing} have no path to their seed images; set retrieve.sources.N.path")
    collections = {row.name: config.seed_collection(row.name) for row in seeded}
    return retrieve.run_retrieve(
        config.retrieve,
        run.stage_path("embed"),
        run.stage_path("decontam"),
        collections,
        work.path,
        choose_map(executor, workers=None),
        seed=config.run.seed,
    )


def assemble_body(config: CurationConfig, run: RunDir, work: StageWork, executor: str) -> dict[str, int]:
    rows = {row.name: row.strategy.kind for row in config.retrieve.sources}
    counts = assemble.run_assemble(
        config.assemble, run.stage_path("ingest"), run.stage_path("retrieve"), rows, work.path, seed=config.run.seed
    )
    upstream = {name: run.stage_record(name)["counts"] for name in ("ingest", "dedup", "decontam")}
    counts.update(assemble.account(upstream["ingest"], upstream["dedup"], upstream["decontam"], counts["curated.pool"]))
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
        "ingest",
        lambda c: {"ingest": c.ingest, "references": c.reference_sets(), "keys": ingest.KEY_SCHEME},
        (),
        ingest_body,
        ingest.summary_line,
    ),
    Stage("embed", lambda c: c.embed, ("ingest",), embed_body, embed_summary),
    Stage("dedup", lambda c: c.dedup, ("ingest", "embed"), dedup_body, dedup.summary_line),
    Stage("decontam", lambda c: c.decontam, ("embed", "dedup"), decontam_body, decontam.summary_line),
    Stage(
        "retrieve",
        lambda c: {"retrieve": c.retrieve, "seed": c.run.seed},
        ("embed", "decontam"),
        retrieve_body,
        retrieve.summary_line,
    ),
    Stage(
        "curated",
        lambda c: {"assemble": c.assemble, "seed": c.run.seed},
        ("ingest", "dedup", "decontam", "retrieve"),
        assemble_body,
        assemble.summary_line,
    ),
    Stage("report", lambda c: {}, ("ingest", "dedup", "decontam", "retrieve", "curated"), report_body, report_summary),
)
STAGES = tuple(stage.name for stage in PIPELINE)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.curate", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    parser.add_argument(
        "--run-dir",
        default=None,
        help="a local path or file:// URL; default: run.dir from the config, else runs/<run.name>",
    )
    parser.add_argument("--from", dest="start_from", choices=STAGES, default=None, help="re-run from this stage on")
    parser.add_argument("--executor", choices=("auto", "local", "ray"), default="auto")
    parser.add_argument("--plan", action="store_true", help="print each stage's work and cost; run nothing")
    parser.add_argument("--pool-size", type=float, default=1.2e9, help="with --plan: crawled images")
    parser.add_argument("--gpus", default=None, help="with --plan: e.g. 8xH100 or 20x8xV100 (default: CPU only)")
    parser.add_argument("--cpus", type=int, default=None, help="with --plan: CPU cores (default 12 per GPU)")
    args = parser.parse_args(argv)
    return exit_code_of(lambda: _plan_or_run(args))


def _plan_or_run(args: argparse.Namespace) -> None:
    config = load_curation_config(args.config, args.overrides)
    if args.plan:
        from curation import cost_model, measurements

        fleet = cost_model.Fleet.parse(args.gpus, args.cpus)
        rows = cost_model.plan(config, args.pool_size, fleet, measurements.load())
        print(cost_model.render(rows, args.pool_size, fleet))
        return
    run = curate(config, config.run_dir(args.run_dir), start_from=args.start_from, executor=args.executor)
    print(f"run directory: {run.root}")


if __name__ == "__main__":
    sys.exit(main())
