"""`python -m pipelines.curate CONFIG [key=value ...]`: run a curation recipe into a run directory.

This is what `ray job submit -- python -m pipelines.curate CONFIG` runs on a cluster; `lvd curate`
is the same command with the same options, and `lvd ingest|embed|dedup|decontam` are it with
`--only STAGE`. Stages whose output is already in the run directory for the same per-stage hash
are skipped (see curation.pipeline); `--from STAGE` forces a stage and everything after it to run
again, `--to STAGE` stops after it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.pipeline import STAGES, curate, stages_up_to
from curation.run_config import load_curation_config
from pipelines.entry import exit_code_of


def main(argv: list[str] | None = None, prog: str = "python -m pipelines.curate") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    parser.add_argument(
        "--run-dir",
        default=None,
        help="a local path or file:// URL; default: run.dir from the config, else runs/<run.name>",
    )
    parser.add_argument("--from", dest="start_from", choices=STAGES, default=None, help="re-run from this stage on")
    parser.add_argument("--to", dest="stop_after", choices=STAGES, default=None, help="stop after this stage")
    parser.add_argument(
        "--only", choices=STAGES, default=None, help="run this stage alone (the stages it reads must be done)"
    )
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
        results = measurements.load()
        rows = cost_model.plan(config, args.pool_size, fleet, results)
        print(cost_model.render(rows, args.pool_size, fleet, results))
        return
    stages = (args.only,) if args.only else stages_up_to(args.stop_after)
    run = curate(config, config.run_dir(args.run_dir), stages, start_from=args.start_from, executor=args.executor)
    print(f"run directory: {run.root}")


if __name__ == "__main__":
    sys.exit(main())
