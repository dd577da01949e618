"""Does curation pay? DINOv2's Table 2 in miniature, on a crawl whose concepts are known.

The paper trains a ViT-g on LVD-142M and on as many uncurated images and finds the curated set
better (IN-1k 85.8 vs 83.3, iNat2018 82.3 vs 68.0). Here one synthetic crawl (`CURATION_VALUE`:
nine structure-only concepts under random hues; the four the seed sets cover make up a fifth of
the pool; 8% of the pool are copies; some evaluation images leak into it as near copies) is
curated once by the pipeline, and the same ViT trains with the same steps, batch and schedule on
each variant of its pool:

    curated        the curated set, retrieved from the seed sets as the pipeline assembles it
    random         a random sample of the deduplicated, decontaminated pool, as large as `curated`
    deduplicated   the whole deduplicated, decontaminated pool
    raw            the pool without deduplication (copies left in; still decontaminated)
    balanced       hierarchical k-means sampling of the deduplicated pool, as large as `curated`

Each model, and the random-init network, is measured with weighted kNN and a linear probe on the
crawl's evaluation sets, one for the covered concepts and one for the others (curation should
help the first; the second shows what it costs), over several seeds (a seed draws the training
order and the random and balanced samples). Work directory:

    WORK/crawl/                                 the crawl and its truth
    WORK/run/                                   the curation run (every stage)
    WORK/<N>-steps/<variant>/seed<S>/shards/    what that run trains on (members.parquet names it)
    WORK/<N>-steps/<variant>/seed<S>/train/     the training run; evaluation.json when evaluated
    WORK/results.json                           one row per variant and seed, of the latest call

Runs are kept per training length, so a call with another `scale` trains afresh beside them.

Every step is skipped when its output exists, so a killed run re-run continues where it stopped.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from curation.assemble import locate, read_images
from curation.decontam import components_of_rows
from curation.ingest import POOL
from curation.pipeline import curate
from curation.retrieve import Balanced, Pool, balanced
from curation.run_config import CurationConfig, load_curation_config
from curation.shards import ShardWriter
from curation.synth.crawl import COVERED, CURATION_VALUE, make_crawl
from foundation.config import load_config
from foundation.files import write_text
from models.embedders import create_embedder
from training.config import TrainConfig
from training.eval import accuracy, extract_features, knn_predict, linear_probe
from training.train_loop import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "training" / "curation_value.yaml"
VARIANTS = ("curated", "random", "deduplicated", "raw", "balanced")
RANDOM_INIT = "random init"
TASKS = ("covered", "uncovered")
PROTOCOLS = ("knn", "linear")
SHARD_SIZE = 500

Member = tuple[str, str]  # (collection, key), as the ingest stage stores images


@dataclass(frozen=True)
class Labelled:
    """One evaluation task: the crawl's eval images of a set, split into train and test by the truth."""

    train_paths: list[Path]
    train_labels: torch.Tensor
    test_paths: list[Path]
    test_labels: torch.Tensor


@dataclass(frozen=True)
class Row:
    """One trained (or random-init) model: what it trained on and its top-1 per task and protocol."""

    variant: str
    seed: int
    images: int
    covered_share: float  # of training images whose true concept a seed set covers
    steps: int
    train_s: float
    scores: dict[str, float]  # "<task>.<protocol>" -> top-1


def prepare(work: Path, images: int, seed: int = 0) -> tuple[Path, Path, CurationConfig]:
    """The crawl and its curation run (each made once)."""
    crawl = work / "crawl"
    if not (crawl / "truth.parquet").exists():
        make_crawl(crawl, images=images, seed=seed, spec=CURATION_VALUE)
    config = load_curation_config(crawl / "curation.yaml")
    run = curate(config, config.run_dir(str(work / "run")))
    return crawl, run.root, config


def members_of(variant: str, run: Path, config: CurationConfig, seed: int) -> list[Member]:
    """The images `variant` trains on, sorted."""
    curated = _columns(run / "curated" / "index.parquet", "collection", "key")
    if variant == "curated":
        return sorted(curated)
    kept = [(POOL, key) for key in _column(run / "decontam" / "keep.parquet", "key")]
    if variant == "deduplicated":
        return kept
    if variant == "raw":
        return raw_pool(run)
    rng = np.random.default_rng(seed)
    if variant == "random":
        return sorted(kept[i] for i in rng.choice(len(kept), min(len(curated), len(kept)), replace=False))
    if variant == "balanced":
        with tempfile.TemporaryDirectory() as scratch:
            pool = Pool.load(run / "embed", config.retrieve.role, run / "decontam", Path(scratch) / "vectors.npy")
            n = len(pool.keys)  # two levels, ~20 and ~200 images per cluster: the paper's tree shrunk to this pool
            strategy = Balanced(images=len(curated), levels=[max(4, n // 20), max(2, n // 200)])
            selection = balanced(pool, strategy, config.retrieve.kmeans_iterations, seed)
        return sorted((POOL, key) for key in selection.keys.to_pylist())
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def raw_pool(run: Path) -> list[Member]:
    """Every ingested pool image whose duplicate component holds no contaminated image.

    Decontamination removes one kept image per component; here the copies dedup dropped are in
    the set, so a copy of a leaked evaluation image must go with it.
    """
    ingested = sorted(_column(run / "ingest" / "index.parquet", "key"))
    component = components_of_rows(run / "dedup", pa.array(ingested, pa.string()))
    contaminated = set(_column(run / "decontam" / "removed.parquet", "component"))
    return [(POOL, key) for key, c in zip(ingested, component.tolist(), strict=True) if c not in contaminated]


def _column(path: Path, name: str) -> list:
    return pq.read_table(path, columns=[name])[name].to_pylist()


def _columns(path: Path, *names: str) -> list[tuple]:
    table = pq.read_table(path, columns=list(names))
    return list(zip(*(table[name].to_pylist() for name in names), strict=True))


def write_shards(ingest_dir: Path, members: list[Member], out: Path) -> None:
    """The members' ingested JPEGs as WebDataset shards, and members.parquet naming them (written last)."""
    if (out / "members.parquet").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"collection": [c for c, _ in members], "key": [k for _, k in members]})
    stored = locate(ingest_dir, table)
    for shard, start in enumerate(range(0, len(members), SHARD_SIZE)):
        chunk = stored.slice(start, SHARD_SIZE).to_pylist()
        with ShardWriter(out / f"{shard:06d}.tar") as writer:
            for row, jpeg in zip(chunk, read_images(ingest_dir, chunk), strict=True):
                writer.write(row["key"], {"jpg": jpeg})
    pq.write_table(table, out / "members.parquet")


def labelled_tasks(crawl: Path) -> dict[str, Labelled]:
    """The crawl's evaluation sets as kNN/linear-probe tasks, with labels from the truth table."""
    truth = pq.read_table(crawl / "truth.parquet").to_pylist()
    tasks = {}
    for task in TASKS:
        rows = [r for r in truth if r["role"] == "eval" and r["set"] == task]
        classes = sorted({r["concept"] for r in rows})
        split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
        tasks[task] = Labelled(
            *(
                part
                for s in ("train", "test")
                for part in (
                    [crawl / r["path"] for r in split[s]],
                    torch.tensor([classes.index(r["concept"]) for r in split[s]]),
                )
            )
        )
    return tasks


def evaluate(export: Path, tasks: dict[str, Labelled], seed: int, weights: str | None = None) -> dict[str, float]:
    """Top-1 of weighted kNN (k=20, T=0.07) and of a linear probe on each task's frozen features."""
    torch.manual_seed(seed)  # the random-init network of a seed is always the same one
    embedder = create_embedder(f"lvd:{export}", weights=weights)
    scores = {}
    for name, task in tasks.items():
        train_features = extract_features(embedder, task.train_paths)
        test_features = extract_features(embedder, task.test_paths)
        knn = knn_predict(train_features, task.train_labels, test_features)
        linear = linear_probe(train_features, task.train_labels, test_features, seed=seed)
        scores[f"{name}.knn"] = round(accuracy(knn, task.test_labels), 4)
        scores[f"{name}.linear"] = round(accuracy(linear, task.test_labels), 4)
    return scores


def concepts_of(crawl: Path, run: Path) -> dict[str, str | None]:
    """Ingest key -> the true concept of the pool file it came from (matched by source path)."""
    truth = {(crawl / r["path"]).resolve(): r["concept"] for r in pq.read_table(crawl / "truth.parquet").to_pylist()}
    return {
        key: truth.get(Path(source).resolve())
        for key, source in _columns(run / "ingest" / "index.parquet", "key", "source")
    }


def covered_share(members: list[Member], concepts: dict[str, str | None]) -> float:
    """How many of `members` (pool images) show a concept the seed sets cover."""
    pool = [concepts[key] for collection, key in members if collection == POOL]
    return round(sum(c in COVERED for c in pool) / max(1, len(pool)), 4)


@dataclass(frozen=True)
class Bench:
    """What every run of one call shares: the curated crawl, its eval tasks and truth, the training length."""

    runs: Path  # WORK/<N>-steps
    crawl: Path
    run: Path
    config: CurationConfig
    tasks: dict[str, Labelled]
    concepts: dict[str, str | None]
    settings: list[str]


def run_variant(bench: Bench, variant: str, seed: int) -> Row:
    """Train on `variant` with `seed`, evaluate, and keep the row (a finished row is read back)."""
    where = bench.runs / variant / f"seed{seed}"
    done = where / "row.json"
    if done.exists():
        return Row(**json.loads(done.read_text()))
    members = members_of(variant, bench.run, bench.config, seed)
    write_shards(bench.run / "ingest", members, where / "shards")
    train_config = training_config(where, seed, bench.settings)
    started = time.perf_counter()
    result = train(train_config)
    train_s = time.perf_counter() - started
    scores = evaluate(result.export.parent, bench.tasks, seed)
    evaluation = {
        "trained on": variant,
        "seed": seed,
        "images": len(members),
        **{f"top-1 {k}": v for k, v in scores.items()},
    }
    write_text(where / "train" / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    share = covered_share(members, bench.concepts)
    row = Row(variant, seed, len(members), share, result.steps, round(train_s, 1), scores)
    write_text(done, json.dumps(asdict(row), indent=2) + "\n")
    return row


def run_settings(scale: float, workers: int | None) -> tuple[int, list[str]]:
    """Steps per run and the overrides every variant shares: `scale` times the config's epochs, the loader's workers."""
    optim = load_config(TrainConfig, CONFIG).optim
    epochs = max(1, round(optim.epochs * scale))
    return epochs * optim.epoch_length, [
        f"optim.epochs={epochs}",
        *([f"data.workers={workers}"] if workers is not None else []),
    ]


def training_config(where: Path, seed: int, settings: list[str]) -> TrainConfig:
    where_and_seed = [f"data.shards={where / 'shards'}", f"run.output_dir={where / 'train'}", f"run.seed={seed}"]
    return load_config(TrainConfig, CONFIG, [*settings, *where_and_seed])


def random_init_row(bench: Bench, seed: int) -> Row:
    """The untrained network of the same architecture: the floor every variant must clear."""
    export = next(bench.runs.glob(f"*/seed{seed}/train/export"))
    scores = evaluate(export, bench.tasks, seed, weights="random")
    return Row(RANDOM_INIT, seed, 0, 0.0, 0, 0.0, scores)


def run_all(
    work: Path,
    images: int = 3000,
    seeds: int = 3,
    scale: float = 1.0,
    variants: tuple[str, ...] = VARIANTS,
    workers: int | None = None,
    progress: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """Every variant with every seed, then the random-init rows; results.json holds them all.

    `workers` overrides the config's in-process loading (right for 2 cores; a GPU host wants several).
    """
    work = work.resolve()
    crawl, run, config = prepare(work, images)
    steps, settings = run_settings(scale, workers)
    bench = Bench(work / f"{steps}-steps", crawl, run, config, labelled_tasks(crawl), concepts_of(crawl, run), settings)
    rows = []
    for seed in range(seeds):
        for variant in variants:
            rows.append(run_variant(bench, variant, seed))
            progress(rows[-1])
        rows.append(random_init_row(bench, seed))
        progress(rows[-1])
    write_text(work / "results.json", json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows


@dataclass(frozen=True)
class Summary:
    """A variant over its seeds: mean sizes, and mean and std of each score."""

    variant: str
    seeds: int
    images: float
    covered_share: float
    mean: dict[str, float]
    std: dict[str, float]


def summarise(rows: list[Row]) -> list[Summary]:
    """Mean and (sample) standard deviation over seeds, per variant, in the order rows came."""
    by_variant: dict[str, list[Row]] = {}
    for row in rows:
        by_variant.setdefault(row.variant, []).append(row)
    summaries = []
    for variant, group in by_variant.items():
        metrics = group[0].scores
        summaries.append(
            Summary(
                variant,
                len(group),
                statistics.fmean(r.images for r in group),
                statistics.fmean(r.covered_share for r in group),
                {m: statistics.fmean(r.scores[m] for r in group) for m in metrics},
                {m: statistics.stdev(r.scores[m] for r in group) if len(group) > 1 else 0.0 for m in metrics},
            )
        )
    return summaries


def table(summaries: list[Summary]) -> str:
    """The summaries as a Markdown table: top-1 mean ± std over seeds, per task and protocol."""
    columns = [f"{task} {protocol}" for task in TASKS for protocol in PROTOCOLS]
    lines = [
        "| trained on | images | covered share | " + " | ".join(columns) + " | seeds |",
        "|---|---|---|" + "---|" * len(columns) + "---|",
    ]
    for s in summaries:
        cells = [
            f"{s.mean[f'{task}.{protocol}']:.3f} ± {s.std[f'{task}.{protocol}']:.3f}"
            for task in TASKS
            for protocol in PROTOCOLS
        ]
        images = "—" if s.variant == RANDOM_INIT else f"{s.images:,.0f}"
        share = "—" if s.variant == RANDOM_INIT else f"{s.covered_share:.2f}"
        lines.append(f"| {s.variant} | {images} | {share} | " + " | ".join(cells) + f" | {s.seeds} |")
    return "\n".join(lines)
