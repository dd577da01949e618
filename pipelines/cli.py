"""The `lvd` command: a few verbs, every knob a `key.sub=value` override on the config tree."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from curation.rundir import RunDir
from foundation.errors import CorruptInput, LvdError
from pipelines.entry import DEBUG_ENV, exit_code_of

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)
console = Console()

Overrides = Annotated[list[str] | None, typer.Argument(help="key.sub=value config overrides")]


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help=f"show a failure's traceback (or set {DEBUG_ENV}=1)")] = False,
) -> None:
    """Errors print one line naming the cause; --debug shows the traceback."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="folder to write (replaced if it exists) or, with --serve, to serve")],
    images: Annotated[int, typer.Option(help="pool files to generate")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    base_url: Annotated[str, typer.Option(help="URL prefix written to urls.parquet")] = "http://127.0.0.1:8765",
    serve: Annotated[bool, typer.Option("--serve", help="serve an existing crawl over HTTP on 127.0.0.1")] = False,
    port: Annotated[int | None, typer.Option(help="with --serve: port (default: from base_url)")] = None,
) -> None:
    """Write a synthetic crawl with known truth, or serve one over loopback HTTP."""
    if serve:
        from curation.synth.server import make_server

        server = make_server(out, port)
        console.print(f"serving {out} on http://127.0.0.1:{server.server_address[1]} (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.server_close()
        return
    from curation.synth.crawl import make_crawl

    started = time.monotonic()
    make_crawl(out, images=images, seed=seed, base_url=base_url)
    console.print(
        f"synth: {images} pool images + seed and eval sets in {out} ({time.monotonic() - started:.1f}s); "
        f"truth in {out / 'truth.parquet'}, config in {out / 'curation.yaml'}"
    )


PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
"""Context settings for verbs whose arguments and --help belong to `python -m pipelines.curate`."""


def _run_curate_main(args: list[str], prog: str) -> None:
    from pipelines.curate import main as curate_main

    code = curate_main(args, prog=prog)
    if code:
        raise typer.Exit(code)


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def curate(ctx: typer.Context) -> None:
    """Run the curation stages: CONFIG [key=value ...] [--run-dir] [--from|--to|--only STAGE] [--executor] [--plan].

    The options of `python -m pipelines.curate`, which `lvd curate --help` lists.
    """
    _run_curate_main(ctx.args, "lvd curate")


def _single_stage(name: str, help_text: str) -> None:
    """Register `lvd <name> CONFIG [overrides] [--run-dir RUN] ...`: `lvd curate ... --only <name>`."""

    def command(ctx: typer.Context) -> None:
        _run_curate_main([*ctx.args, "--only", name], f"lvd {name}")

    command.__doc__ = help_text + " (`lvd curate --only " + name + "`; --help lists the options)"
    app.command(name=name, context_settings=PASS_THROUGH, add_help_option=False)(command)


_single_stage("ingest", "Ingest the config's sources (and seed/eval sets) into WebDataset shards under RUN/ingest/.")
_single_stage("embed", "Embed ingested images with each configured role's model into RUN/embed/<role>/.")
_single_stage("dedup", "Faiss kNN graph over copy embeddings, one image kept per component, into RUN/dedup/.")
_single_stage("decontam", "Drop dedup components close to evaluation images, into RUN/decontam/.")


@app.command()
def status(run_dir: Path) -> None:
    """Print a run directory's manifest as a table."""
    manifest = RunDir(run_dir).read_manifest()
    if "config_hash" not in manifest:
        raise LvdError(f"{run_dir} has no manifest.json; is it a run directory?")
    table = Table(title=f"{run_dir}  (config {manifest['config_hash'][:12]})")
    for column in ("stage", "status", "hash", "seconds", "counts"):
        table.add_column(column)
    for name, record in manifest["stages"].items():
        counts = ", ".join(f"{k} {v}" for k, v in record.get("counts", {}).items())
        table.add_row(name, record["status"], record["hash"][:12], str(record.get("seconds", "")), counts)
    console.print(table)
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    console.print(f"versions: {versions}", highlight=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a curation run directory or a training output_dir")],
    out: Annotated[Path | None, typer.Option(help="default: RUN/report")] = None,
) -> None:
    """Write stats.json and a self-contained index.html for a curation run (or a training run's curves)."""
    from curation.report.render import write_report
    from training.report import write_training_report

    if (run_dir / "metrics.jsonl").is_file():
        write_training_report(run_dir, out)
    else:
        write_report(run_dir, out)
    console.print(f"report: {(out or run_dir / 'report') / 'index.html'}")


@app.command()
def stats(run_dir: Path) -> None:
    """Print a curation run's funnel, final buckets and source rows (the numbers of its report)."""
    from curation.report.stats import collect_stats

    numbers = collect_stats(run_dir)
    funnel = Table(title=f"{run_dir}: funnel")
    funnel.add_column("step")
    funnel.add_column("images", justify="right")
    for row in numbers["funnel"]:
        funnel.add_row(row["step"], str(row["images"]))
    fates = Table(title="every crawled image, once")
    fates.add_column("bucket")
    fates.add_column("images", justify="right")
    for fate, n in numbers["fates"].items():
        fates.add_row(fate, str(n))
    fates.add_row("[bold]crawled[/bold]", f"[bold]{numbers['inputs']}[/bold]")
    rows = Table(title="source rows")
    for column in ("row", "strategy", "target", "retrieved", "shortfall", "cause"):
        rows.add_column(column)
    for row in numbers["sources"]:
        rows.add_row(*(str(row[c]) for c in ("name", "strategy", "target", "retrieved", "shortfall", "cause")))
    for table in (funnel, fates, rows):
        console.print(table)
    quarantine = ", ".join(f"{k} {v}" for k, v in numbers["quarantine"].items())
    console.print(f"quarantined: {quarantine or 'none'}", highlight=False)


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="a run directory, or a curated folder on its own")],
    workers: Annotated[int, typer.Option(help="processes reading shards")] = os.cpu_count() or 1,
) -> None:
    """Read back every image of a run's ingest and curated shards (or of a curated folder) against
    its recorded sha256."""
    from tqdm import tqdm

    from curation.verify import is_curated_folder, summary_line, verify_all, verify_tasks
    from foundation.executors import process_map

    tasks = verify_tasks(path)
    with tqdm(total=sum(t.shards for t in tasks), desc="verify", unit="shard", file=sys.stderr) as bar:
        verdicts = verify_all(tasks, process_map(workers), bar.update)
    for verdict in sorted((v for v in verdicts if v.problem), key=lambda v: v.tar):
        console.print(f"{verdict.tar}: {verdict.problem}", highlight=False, soft_wrap=True)
    line = summary_line(verdicts, curated_folder=is_curated_folder(path))
    if any(v.problem for v in verdicts):
        raise CorruptInput(line)
    console.print(line, highlight=False, soft_wrap=True)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where the crawl, the runs and the models go")] = Path("lvd-demo"),
    images: Annotated[int, typer.Option()] = 2000,
    training: Annotated[bool, typer.Option("--train/--no-train", help="also pretrain, distil and evaluate")] = True,
    ablation: Annotated[
        bool, typer.Option("--ablation", help="also measure what curation is worth (benchmarks/curation_value.py)")
    ] = False,
    seeds: Annotated[int, typer.Option(help="with --ablation: seeds per variant")] = 3,
) -> None:
    """End to end on a synthetic crawl: synth, every curation stage, then pretraining, distillation and kNN eval.

    With --ablation, the same ViT is also trained on the curated set and on four other variants of a
    harder crawl's pool (random sample, whole deduplicated pool, raw pool, balanced sample) and each is
    measured on the concepts the seed sets cover and on the rest: DINOv2's Table 2 in miniature.
    """
    from curation.synth.crawl import make_crawl

    crawl = workdir / "crawl"
    if not (crawl / "truth.parquet").exists():
        make_crawl(crawl, images=images)
    from curation.pipeline import curate as run_curation
    from curation.run_config import load_curation_config

    config = load_curation_config(crawl / "curation.yaml")
    run = run_curation(config, config.run_dir(str(workdir / "run")))
    status(run.root)
    console.print(
        f"demo: curated shards in {run.root / 'curated'}, report {run.root / 'report' / 'index.html'}, "
        f"manifest {run.root / 'manifest.json'}"
    )
    if ablation:
        from pipelines.curation_value import run_all, summarise, table

        console.print(table(summarise(run_all(workdir / "curation-value", seeds=seeds))), highlight=False)
        console.print(f"demo: curation-value runs and results.json in {workdir / 'curation-value'}")
    if not training:
        return
    from pipelines.demo_training import train_distill_evaluate

    rows = train_distill_evaluate(workdir)
    table = Table(title="kNN top-1 on the synthetic concepts (k=20, T=0.07)")
    for column in ("model", "params", "steps", "kNN top-1", "seed"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.model, f"{row.params / 1e6:.2f}M", str(row.steps), f"{row.knn_top1:.3f}", str(row.seed))
    console.print(table)
    console.print(
        f"demo: models in {workdir / 'train'}, {workdir / 'distill'}, {workdir / 'scratch'}; "
        f"table in {workdir / 'eval.json'}"
    )


@app.command()
def train(
    config: Path,
    overrides: Overrides = None,
    ray_workers: Annotated[int, typer.Option(help="run on N Ray Train workers instead of in this process")] = 0,
    gpu: Annotated[bool, typer.Option(help="with --ray-workers: one GPU per worker")] = False,
) -> None:
    """DINOv2 pretraining on curated shards (for several GPUs on one node, use torchrun -m pipelines.pretrain)."""
    from pipelines.pretrain import main as pretrain_main

    if not ray_workers:
        raise typer.Exit(pretrain_main([str(config), *(overrides or [])]))
    from training.ray_launch import train_on_ray

    train_on_ray(config, overrides or [], ray_workers, gpu)


@app.command()
def distill(
    config: Path,
    overrides: Overrides = None,
    teacher: Annotated[
        Path | None, typer.Option(help="a training run directory or a backbone export (default: from the config)")
    ] = None,
) -> None:
    """Distil a frozen teacher into a smaller student on curated shards; exports the student's EMA."""
    from pipelines.distill import main as distill_main
    from training.distill import teacher_overrides

    extra = teacher_overrides(teacher) if teacher else []
    raise typer.Exit(distill_main([str(config), *(overrides or []), *extra]))


@app.command(name="eval")
def evaluate(
    protocol: Annotated[str, typer.Argument(help="knn or linear")],
    model: Annotated[str, typer.Argument(help="an embedder: lvd:<export dir>, dinov2:vitl14, timm:<arch>")],
    train_dir: Annotated[Path, typer.Option("--train", help="labelled image folder: ROOT/<class>/*.jpg")],
    val_dir: Annotated[Path, typer.Option("--val", help="labelled image folder with the same classes")],
    weights: Annotated[str | None, typer.Option(help="checkpoint path ('random' for the random-init baseline)")] = None,
    k: Annotated[int, typer.Option(help="kNN neighbours")] = 20,
    temperature: Annotated[float, typer.Option(help="kNN vote temperature")] = 0.07,
    out: Annotated[Path | None, typer.Option(help="write the result as JSON here")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Top-1 accuracy of frozen features with weighted kNN (k=20, T=0.07) or a linear probe."""
    from training.eval import evaluate_folders

    result = evaluate_folders(protocol, model, train_dir, val_dir, weights, k, temperature, seed)
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    console.print(text, highlight=False)


def main() -> None:
    """The `lvd` command: typer parses and runs; a failure is told in one line (see pipelines.entry)."""
    sys.exit(exit_code_of(app))


if __name__ == "__main__":
    main()
