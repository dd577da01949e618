"""Embed-stage throughput as a ratio to a bare loop of `model(x)` on the same preprocessed tensors.

    python benchmarks/embed.py [--images 2000] [--model dinov2:vits14] [--batch-size 32] [--gpu]
        [--executor ray|local] [--decode auto|cpu|device ...] [--repeat 1]

Both sides run the same model (random weights: speed does not depend on them) at the same batch
size. The bare side times only the forward passes over tensors prepared in advance; the stage
side is the embed stage's own machinery (`embed_runner.run_in_process` or `run_on_ray`: shard reading, JPEG decoding,
preprocessing, the Ray Data actor pool or the in-process prefetch, parquet writing). Ingest shards
hold four batches each, so the stage's batches are as full as the bare loop's.

The stage pays a start-up the bare loop does not: Ray Data planning, the actor's process, imports,
the model's build, the first shards' reading (about 5.5 s on 2 cores with ViT-S/14). A real run
lasts hours, so the figures that count, and the ones recorded, leave it out: the stage runs once
over every shard and once over the first third, and the difference in time (and in CPU busy
time) is what the images in between cost. That gives images/s, the ratio to the bare loop
(targets: >= 0.90 on CPU with a ViT-S-sized model, issue 4; >= 0.90 for ViT-H/14 fp16 on one GPU,
issue 18), the model's FLOP utilisation (one image's forward counted by torch's FlopCounterMode,
over `foundation/gpus.py`'s dense fp16 peak for the GPU), the CPU cores busy, and the start-up
itself. The end-to-end figures are printed beside them: on a GPU, 3,000 ViT-H images are 2.5 s
of bare work, so end to end would measure little but the start-up. (Records before 2026-11-26 are
end to end, over 2,000 images on CPU.) For enough work between the two passes on a GPU without a
long synthetic crawl, `--repeat R` has the stage read the ingested shards R times over (the bare
rate does not depend on the image count).
Several `--decode` values each get their passes, in order; with --record the last one's rate is
what `--plan` reads. `--profile` adds, after each, an in-process pass over a third of the shards
under torch.profiler: the share of it in which the GPU ran kernels, and the operators that took
that time, so a stage short of its bare loop can say where the rest went.

With --gpu the model runs on one GPU in fp16 (e.g. timm:vit_huge_patch14_224). `--executor local`
runs the stage in this process, as a GPU box without Ray does: its prefetch threads read and decode
the next shards while the model works; `--decode device` decodes the JPEGs with the model's device
(nvjpeg on a GPU). The CPU cores busy are counted over the whole machine (/proc/stat), so Ray's
workers and the prefetch threads count; with --gpu and --record they are recorded per image
(`embed.core_seconds_per_image`), which `--plan` turns into cores per GPU for its fleet (target,
issue 18: at most 2 per GPU with ViT-H/14).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from curation.embed import EmbedConfig, EmbedWorker, ShardCollector, pending_jobs
from curation.embed_runner import local_worker, run_in_process, run_on_ray
from curation.measurements import record
from curation.pipeline import curate
from curation.run_config import CurationConfig
from curation.shards import iter_samples
from curation.synth.crawl import make_crawl
from foundation.config import validate_tree
from foundation.gpus import gpu_peak
from foundation.ray_session import connect_ray
from models.embedders import Preprocess, create_embedder
from models.embedders.jpeg_decoders import jpeg_decoder
from training.profiling import kernel_seconds, profiler_for, top_operators


class Bare(NamedTuple):
    images_per_s: float
    flops_per_image: float  # one image's forward, as torch's FlopCounterMode counts it
    peak_tflops: float | None  # the device's dense fp16/bf16 peak, where known

    def utilisation(self, images_per_s: float) -> float | None:
        """The model's FLOP utilisation at `images_per_s` (None without a known peak)."""
        return images_per_s * self.flops_per_image / 1e12 / self.peak_tflops if self.peak_tflops else None

    def mfu(self, images_per_s: float) -> str:
        """TFLOP/s and the utilisation at `images_per_s`, as printed."""
        achieved = f"{images_per_s * self.flops_per_image / 1e12:.1f} TFLOP/s"
        if (mfu := self.utilisation(images_per_s)) is None:
            return f"{achieved} (MFU n/a: no peak for this device)"
        return f"{achieved}, MFU {mfu:.1%} of {self.peak_tflops:.0f}"


def bare_forward(model_name: str, batches: list[np.ndarray], device: str, precision: str) -> Bare:
    """`model(x)` over already-normalised float tensors (one warm-up batch excluded), and its FLOPs."""
    embedder = create_embedder(model_name, weights="random", device=device, precision=precision)
    mean, std = embedder._mean, embedder._std
    tensors = [((torch.as_tensor(b).permute(0, 3, 1, 2).float().to(device) - mean) / std) for b in batches]
    amp = torch.autocast(device, dtype=torch.float16, enabled=device == "cuda")
    with torch.inference_mode(), amp:
        with FlopCounterMode(display=False) as counter:
            embedder.model(tensors[0][:1])
        embedder.model(tensors[0])
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for x in tensors:
            embedder.model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = gpu_peak(torch.cuda.get_device_name()) if device == "cuda" else None
    return Bare(sum(len(x) for x in tensors) / seconds, counter.get_total_flops(), peak and peak.bf16)


class Pass(NamedTuple):
    seconds: float
    busy: float  # CPU core-seconds over the whole machine
    images: int


class Stage(NamedTuple):
    images_per_s: float  # end to end, start-up included
    steady_images_per_s: float  # start-up excluded
    steady_cores: float  # CPU cores busy, start-up excluded
    startup_seconds: float


def one_pass(
    config: EmbedConfig,
    run_dir: Path,
    name: str,
    shards: int,
    use_ray: bool,
    preprocess: Preprocess,
    worker: EmbedWorker | None = None,
) -> Pass:
    """The copy role's model over the first `shards` ingested shards, through the stage's own
    runner, into `run_dir/embed/<name>`; in process, by `worker` if given (built before the clock)."""
    spec = config.models["copy"]
    jobs, _ = pending_jobs(run_dir / "ingest", run_dir / "embed" / name, spec.batch_size)
    collector = ShardCollector()
    started, busy = time.perf_counter(), cpu_busy_seconds()
    with tqdm(total=shards, desc=f"embed {name}", unit="shard", file=sys.stderr) as progress:
        if use_ray:
            run_on_ray(jobs[:shards], spec, config, collector, preprocess, progress)
        else:
            run_in_process(jobs[:shards], worker or local_worker(spec, config), config, collector, progress)
    return Pass(time.perf_counter() - started, cpu_busy_seconds() - busy, collector.images)


def profile_pass(config: EmbedConfig, run_dir: Path, preprocess: Preprocess, device: torch.device) -> None:
    """An in-process pass over a third of the shards under torch.profiler, the model built first:
    how busy the GPU was, and which operators (decode, resize, the model, copies) took its time."""
    worker = local_worker(config.models["copy"], config)
    shards = len(list((run_dir / "ingest").glob("*.tar"))) // 3
    with profiler_for(device) as prof:
        done = one_pass(config, run_dir, f"{config.decode}-profiled", shards, False, preprocess, worker)
    if device.type == "cuda":
        busy = kernel_seconds(prof) / done.seconds
        print(f"profile ({config.decode:6s}) : GPU busy {busy:.0%} of a pass over {done.images} images")
    print(top_operators(prof, device))


def time_stage(config: EmbedConfig, run_dir: Path, use_ray: bool, preprocess: Preprocess) -> Stage:
    """The stage's rate without its fixed start-up: a pass over every shard, then one over the
    first third; the difference is the marginal cost of the images in between. The whole pass
    runs first, so one-time costs (nvjpeg's set-up, say) count against the stage."""
    shards = len(list((run_dir / "ingest").glob("*.tar")))
    if shards < 3:
        raise SystemExit(f"{shards} ingested shards are too few to separate start-up from rate: raise --images")
    whole = one_pass(config, run_dir, f"{config.decode}-all", shards, use_ray, preprocess)
    part = one_pass(config, run_dir, f"{config.decode}-third", shards // 3, use_ray, preprocess)
    seconds = whole.seconds - part.seconds
    steady = (whole.images - part.images) / seconds
    startup = max(0.0, whole.seconds - whole.images / steady)  # a near-zero start-up can come out below zero
    return Stage(whole.images / whole.seconds, steady, (whole.busy - part.busy) / seconds, startup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="dinov2:vits14")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray", help="Ray Data, or in this process")
    parser.add_argument(
        "--decode", choices=("auto", "cpu", "device"), nargs="+", default=["auto"], help="embed.decode, one pass each"
    )
    parser.add_argument("--repeat", type=int, default=1, help="the stage reads the ingested shards this many times")
    parser.add_argument("--record", action="store_true", help="append the measured rates to benchmarks/results.jsonl")
    parser.add_argument(
        "--profile", action="store_true", help="then one in-process pass per --decode under torch.profiler"
    )
    args = parser.parse_args()
    device, precision = ("cuda", "fp16") if args.gpu else ("cpu", "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        crawl = make_crawl(Path(tmp) / "crawl", images=args.images + 40, seed=0)
        tree = {
            "ingest": {"sources": [{"kind": "folder", "path": str(crawl / "pool")}], "shard_size": 4 * args.batch_size},
            "retrieve": {"role": "copy"},
            "embed": {
                "models": {
                    "copy": {
                        "name": args.model,
                        "weights": "random",
                        "batch_size": args.batch_size,
                        "precision": precision,
                    }
                },
                "gpus_per_actor": 1.0 if args.gpu else 0.0,
            },
        }
        config = validate_tree(CurationConfig, tree, source="benchmark")
        run_dir = Path(tmp) / "run"
        curate(config, run_dir, ("ingest",), executor="local")
        preprocess = create_embedder(args.model, weights="random").preprocess
        pixels = [
            preprocess.from_jpeg(s["jpg"])
            for t in sorted((run_dir / "ingest").glob("*.tar"))
            for _, s in iter_samples(t)
        ]
        n = len(pixels)
        batches = [np.stack(pixels[i : i + args.batch_size]) for i in range(0, n, args.batch_size)]
        bare = bare_forward(args.model, batches, device, precision)
        repeat_shards(run_dir / "ingest", args.repeat)
        print(
            f"model {args.model} on {device} ({precision}), batch {args.batch_size}, {n} images, "
            f"{torch.get_num_threads()} torch threads, {args.executor} executor, the stage reads them {args.repeat}x"
        )
        print(
            f"bare model(x) loop : {bare.images_per_s:8.1f} images/s, {bare.flops_per_image / 1e9:.1f} GFLOP/image, "
            f"{bare.mfu(bare.images_per_s)}"
        )
        if args.executor == "ray":
            connect_ray()
        for decode in args.decode:
            embed = config.embed.model_copy(update={"decode": decode})
            stage = time_stage(embed, run_dir, args.executor == "ray", preprocess)
            report(stage, bare, decode, args)
            if args.profile:
                profile_pass(embed, run_dir, preprocess, torch.device(device))


def repeat_shards(ingest_dir: Path, times: int) -> None:
    """Link every ingested pool shard `times - 1` more times under new names, for the stage to read."""
    for shard in sorted(ingest_dir.glob("*.tar")):
        for copy in range(1, times):
            (ingest_dir / f"{shard.stem}-{copy}.tar").symlink_to(shard)


def report(stage: Stage, bare: Bare, decode: str, args: argparse.Namespace) -> None:
    """Print one pass's figures; with --record, append them (the last pass's rate is what --plan reads)."""
    library = f" with {jpeg_decoder().name}" if decode == "device" else ""
    print(
        f"embed stage        : {stage.steady_images_per_s:8.1f} images/s without its start-up of "
        f"{stage.startup_seconds:.1f} s; {stage.images_per_s:.1f} end to end  (decode {decode}{library})"
    )
    print(f"model utilisation  : {bare.mfu(stage.steady_images_per_s)} in the stage")
    ratio = stage.steady_images_per_s / bare.images_per_s
    core_seconds = stage.steady_cores / stage.steady_images_per_s  # per image
    print(
        f"ratio stage/bare   : {ratio:.2f}  (target >= 0.90; "
        f"{stage.images_per_s / bare.images_per_s:.2f} end to end, start-up included)"
    )
    print(
        f"CPU cores busy     : {stage.steady_cores:8.1f}  ({core_seconds * 1000:.2f} core-ms per image, whole machine)"
    )
    if not args.record:
        return
    record("benchmarks/embed.py", "embed.images_per_s", stage.steady_images_per_s, "images/s", args.model, args.gpu)
    record("benchmarks/embed.py", "embed.stage_ratio", ratio, "ratio", f"{args.model} decode={decode}", args.gpu)
    if not args.gpu:
        return
    # What --plan counts cores per GPU from (on CPU the model's own compute is in it).
    record(
        "benchmarks/embed.py", "embed.core_seconds_per_image", core_seconds, "core-s/image", f"decode={decode}", True
    )
    if (mfu := bare.utilisation(stage.steady_images_per_s)) is not None:  # what --plan's 40% stands in for
        record("benchmarks/embed.py", "embed.stage_mfu", mfu, "fraction", f"{args.model} decode={decode}", True)


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, over all cores (Linux /proc/stat):
    Ray's workers and the loader's threads count as much as this process."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
