"""`python -m pipelines.curate CONFIG [key=value ...]`: run a curation recipe into a run directory.

This is what `ray job submit -- python -m pipelines.curate CONFIG` runs on a cluster, and what
`lvd curate`/`lvd ingest` call locally. Stages whose output is already in the run directory for
the same per-stage config hash are skipped, so re-running the same command after a kill finishes
the work; `--from STAGE` forces a stage and everything after it to run again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from curation import ingest
from curation.errors import LvdError
from curation.run_config import CurationConfig, load_curation_config
from curation.rundir import RunDir, require_new_stage_dir, stage_hash
from pipelines.executors import process_map, ray_map

log = logging.getLogger("pipelines.curate")

STAGES = ("ingest", "embed")
"""Stages in run order; each later issue's stage is appended here."""


def uses_ray(executor: str) -> bool:
    """`ray` when asked, or `auto` under `ray job submit` (RAY_ADDRESS set)."""
    return executor == "ray" or (executor == "auto" and bool(os.environ.get("RAY_ADDRESS")))


def choose_map(executor: str, workers: int) -> Callable:
    """Ray tasks when `uses_ray`, else a local pool of `workers` processes."""
    if uses_ray(executor):
        return ray_map()
    return process_map(workers)


def run_ingest_stage(
    config: CurationConfig, run: RunDir, executor: str = "auto", force: bool = False
) -> dict[str, int]:
    """Run (or skip, when done for the same hash) the ingest stage; returns its manifest counts."""
    references = config.reference_sets()
    hash_ = stage_hash(ingest.STAGE, {"ingest": config.ingest, "references": references})
    if run.is_done(ingest.STAGE, hash_) and not force:
        counts = run.stage_record(ingest.STAGE)["counts"]
        print(ingest.summary_line(counts) + " (already done; skipped)")
        return counts
    with run.stage(ingest.STAGE, hash_) as work, tqdm(desc="ingest shards", unit="shard", file=sys.stderr) as bar:

        def progress(n: int) -> None:
            bar.update(n)

        map_fn = choose_map(executor, config.ingest.workers)
        work.counts = ingest.run_ingest(config.ingest, work, map_fn, progress, references)
    print(ingest.summary_line(work.counts))
    return work.counts


def run_embed(config: CurationConfig, run: RunDir, executor: str = "auto", force: bool = False) -> dict[str, int]:
    from pipelines.embed_runner import run_embed_stage  # torch and Ray load only when a run embeds

    return run_embed_stage(config, run, executor, force)


STAGE_RUNNERS = {"ingest": run_ingest_stage, "embed": run_embed}


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
    for stage in stages:
        forcing = forcing or stage == start_from
        STAGE_RUNNERS[stage](config, run, executor=executor, force=forcing)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.curate", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="default: run.dir from the config, else runs/<run.name>"
    )
    parser.add_argument("--from", dest="start_from", choices=STAGES, default=None, help="re-run from this stage on")
    parser.add_argument("--executor", choices=("auto", "local", "ray"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_curation_config(args.config, args.overrides)
        run = curate(config, config.run_dir(args.run_dir), start_from=args.start_from, executor=args.executor)
    except LvdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run directory: {run.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
