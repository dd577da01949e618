"""Training-loop throughput as a ratio to the bare student+teacher step, and the bare step's MFU.

    python benchmarks/train.py [--steps 40] [--config configs/training/demo.yaml] [key=value ...]
    python benchmarks/train.py --config configs/training/vitl14.yaml --synthetic-images 3000 \\
        data.workers=12 run.parallel=ddp                                  # one GPU, unsharded
    torchrun --nproc-per-node 1 benchmarks/train.py --config configs/training/vitl14.yaml \\
        --synthetic-images 3000 data.workers=12                           # the same under FSDP2

Both sides use the same model, batch size, crops and precision (bf16 autocast on CUDA unless the
config says otherwise). The bare side times forward, loss, backward, AdamW and the EMA update on
multi-crop batches already in memory, with the model unsharded; the loop side is `train()`
itself (WebDataset reading, JPEG decoding and multi-crop in loader workers, schedules, NaN checks,
metrics, one checkpoint at the end, FSDP2 when the config asks for it), timed from its metrics log
after the first logged window. Targets: loop >= 0.95 of bare, FSDP2 on one GPU >= 0.90 of bare.
Between the two it prints how many images per second one loader worker (one core) turns into the
recipe's multi-crop views, JPEG decoding included, and so how many workers the bare step needs
(with fewer than that in `data.workers`, the loop cannot keep up with the bare step), and what
colouring a batch on the training device costs, which the loop pays and the bare step does not.

FLOPs of one bare step are counted with `torch.utils.flop_counter.FlopCounterMode`; MFU is the
achieved rate over the GPU's dense bf16 peak (`--peak-tflops`, else `foundation/gpus.py`'s for the
device's name). Target on H100/H200: bare-step MFU >= 45% for the vitl14 and vitg14 recipes.

    python benchmarks/train.py --config configs/training/vitl14.yaml --levers [--record]
    python benchmarks/train.py --config configs/training/vitl14.yaml --profile run.parallel=ddp

`--levers` times the bare step alone with each speed lever on its own against the plain step (no
lever), then all of them, so each lever's share is measured rather than guessed. `--profile`
prints the operators that take the most device time over a few bare steps (torch.profiler), the
evidence to choose the next lever by; under torchrun with run.parallel=fsdp it profiles the
FSDP2-sharded step, where hooks and DTensor dispatch cost host time. On CUDA every bare figure
also says how long the host takes to issue a step: when that nears the step's time, the host, not
the GPU, sets the pace (or the launch queue is full).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from curation.measurements import record
from curation.shards import ShardWriter
from curation.synth.concepts import PROCEDURAL
from foundation.config import load_config
from foundation.gpus import gpu_peak
from training.colour import colour_for
from training.config import TrainConfig
from training.data import loader_for, multi_crop_for
from training.distributed import init, wrap_student
from training.optim import Schedules, build_optimizer
from training.profiling import kernel_seconds, profiler_for, synchronize, top_operators
from training.student_teacher import DinoV2, compute_losses
from training.train_loop import autocast_dtype, autocast_for, train


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The dense bf16 peak MFU is measured against: `--peak-tflops`, else the table's for this GPU."""
    if given or device.type != "cuda":
        return given
    peak = gpu_peak(torch.cuda.get_device_name(device))
    return peak.bf16 if peak else None


def web_jpegs(images: int, size: tuple[int, int] = (500, 375)) -> Iterator[bytes]:
    """Web-sized procedural JPEGs (500x375, as a typical crawled photo)."""
    rng = np.random.default_rng(0)
    concepts = sorted(PROCEDURAL)
    for i in range(images):
        buffer = io.BytesIO()
        PROCEDURAL[concepts[i % len(concepts)]](rng, size).save(buffer, format="JPEG", quality=90)
        yield buffer.getvalue()


def synthetic_shards(out: Path, images: int, per_shard: int = 500) -> Path:
    """`web_jpegs` in WebDataset shards."""
    out.mkdir(parents=True, exist_ok=True)
    jpegs = web_jpegs(images)
    for shard in range(0, images, per_shard):
        with ShardWriter(out / f"{shard // per_shard:06d}.tar") as writer:
            for i in range(shard, min(shard + per_shard, images)):
                writer.write(f"{i:08d}", {"jpg": next(jpegs), "json": b"{}"})
    return out


def crops_per_worker_second(config: TrainConfig, images: int = 32) -> float:
    """Images one loader worker (one core) turns into the recipe's multi-crop views per second
    (JPEG decoding, crops, flips and colour draws): beside the bare step's images/s, how many
    workers keep a GPU fed."""
    multi_crop = multi_crop_for(config)
    jpegs = list(web_jpegs(images))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    try:
        started = time.perf_counter()
        for jpeg in jpegs:
            multi_crop(Image.open(io.BytesIO(jpeg)))
        return images / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def colour_seconds(config: TrainConfig, device: torch.device, repeats: int = 5) -> float:
    """Seconds the training device takes to colour-augment one batch (`CropBatch.coloured`, compiled
    when the run compiles): what the loop pays for taking that work off the loader workers."""
    batch = next(loader_for(config, rank=0, start_step=0, workers=0)).to(device)
    colour = colour_for(config.run.compile)
    for _ in range(2):  # compiles a graph on its first call
        batch.coloured(colour)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        batch.coloured(colour)
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def memory_peak(device: torch.device) -> float:
    """GiB allocated at most since the last call (0 on CPU)."""
    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


PLAIN = ["model.drop_path_rate=0", "optim.fused=false", "run.compile=false", "run.activation_checkpointing=false"]
"""The step with no lever: every block computes the whole batch (as per-sample drop-path masks do)."""
WARMUP_STEPS = 3  # a compiled block compiles a graph per shape on its first steps


class Bare(NamedTuple):
    images: int  # per step
    seconds: float  # per step
    flops: float  # per step: forward and backward (the optimizer and EMA are elementwise, not counted)
    memory_gib: float  # peak allocated
    host_syncs: int | None  # times one step made the host wait for the GPU (None off CUDA)
    issue_seconds: float  # per step, for the host to issue its work: near `seconds`, the host sets the pace


def bare_steps(
    config: TrainConfig, steps: int, device: torch.device, profile: bool = False, shard: bool = False
) -> Bare:
    """The model alone, on multi-crop batches prepared before the clock starts, unsharded unless
    `shard` (FSDP2, as `train()` wraps it; under torchrun).

    FLOPs are counted on an eager, unsharded first step, before any block is compiled; with
    `profile`, the timed steps run under torch.profiler and its top operators are printed.
    """
    loader = loader_for(config, rank=0, start_step=0, workers=0)
    batches = [next(loader).to(device).coloured() for _ in range(min(steps, 8))]
    model = DinoV2(config).to(device)
    student, optimizer = model.student, build_optimizer(model.student, config)
    schedules = Schedules.from_config(config, 1)
    dtype = autocast_dtype(config.run.precision, device)
    autocast = autocast_for(dtype, device)

    def step_once(step: int) -> None:
        values = schedules.apply(optimizer, step)
        with autocast:
            parts = compute_losses(model, student, batches[step % len(batches)], values["teacher_temp"])
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()
        model.after_step(values["momentum"])

    with FlopCounterMode(display=False) as counter:
        step_once(0)
    if config.run.compile:
        model.compile_parts()
    if shard:
        student = wrap_student(model.student, model.ema_modules(), "fsdp", init(), dtype, config.run.block_chunks)
        optimizer = build_optimizer(model.student, config)  # FSDP2 replaced the parameters
    for step in range(1, WARMUP_STEPS + 1):
        step_once(step)
    syncs = count_host_syncs(partial(step_once, WARMUP_STEPS), device)
    synchronize(device)
    memory_peak(device)
    with profiler_for(device) if profile else nullcontext() as prof:
        start = time.perf_counter()
        for step in range(WARMUP_STEPS + 1, WARMUP_STEPS + steps + 1):
            step_once(step)
        issued = (time.perf_counter() - start) / steps
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps
    if prof is not None:
        print(top_operators(prof, device))
        if device.type == "cuda":
            print(f"GPU busy {kernel_seconds(prof) / (seconds * steps):.0%} of the profiled steps")
    images = config.data.batch_size_per_gpu
    return Bare(images, seconds, float(counter.get_total_flops()), memory_peak(device), syncs, issued)


def count_host_syncs(step: Callable[[], None], device: torch.device) -> int | None:
    """How often `step` blocks the host on the GPU (CUDA's sync debug mode warns at each)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def lever_overrides(config: TrainConfig) -> dict[str, list[str]]:
    """Each speed lever as config overrides on top of `PLAIN`. Twice the batch is one: the host's
    work per step hardly grows with it, so where the host nearly sets the pace it buys images/s."""
    return {
        "drop-path subset": [f"model.drop_path_rate={config.model.drop_path_rate}", "model.drop_path_uniform=true"],
        "fused AdamW": ["optim.fused=true"],
        "compiled blocks + losses": ["run.compile=true"],
        "twice the batch": [f"data.batch_size_per_gpu={2 * config.data.batch_size_per_gpu}"],
    }


def lever_table(
    config_path: str, overrides: list[str], steps: int, device: torch.device
) -> list[tuple[str, Bare | None]]:
    """The bare step plain, with each lever alone, and with all of them; None where a setting ran
    out of device memory (the plain step at twice the batch may, on an 80 GB GPU)."""
    each = lever_overrides(load_config(TrainConfig, config_path, overrides))
    settings = {"plain": PLAIN, **{name: [*PLAIN, *extra] for name, extra in each.items()}}
    settings["all levers"] = [*PLAIN, *(o for extra in each.values() for o in extra)]
    rows: list[tuple[str, Bare | None]] = []
    for name, levers in settings.items():
        torch._dynamo.reset()  # each row compiles (or not) afresh
        try:
            bare = bare_steps(load_config(TrainConfig, config_path, [*overrides, *levers]), steps, device)
        except torch.OutOfMemoryError:
            bare = None
        rows.append((name, bare))
        print(f"  {name:24s} {f'{bare.seconds * 1000:8.1f} ms/step' if bare else 'out of memory'}", flush=True)
    return rows


def loop_steps(config: TrainConfig, steps: int) -> float:
    """Seconds per step of `train()`, from its own images/s log, skipping the first window."""
    log_every = 5
    tree = config.model_dump()
    tree["run"].update(max_steps=steps + log_every, log_every=log_every, checkpoint_every=10**9)
    train(TrainConfig.model_validate(tree))
    rows = [json.loads(line) for line in (Path(tree["run"]["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    images_per_s = sum(r["images_per_s"] for r in rows[1:]) / len(rows[1:])
    return config.data.batch_size_per_gpu / images_per_s


def rate(bare: Bare, peak: float | None) -> str:
    """One bare step as time, images/s, FLOPs and MFU."""
    achieved = bare.flops / bare.seconds / 1e12
    mfu = f"MFU {achieved / peak:.1%} of {peak:.0f}" if peak else "MFU n/a (no peak for this device; --peak-tflops)"
    host = (
        ""
        if bare.host_syncs is None  # only counted on CUDA, where the host can run ahead of the device
        else f", {bare.host_syncs} host syncs/step, host issues it in {bare.issue_seconds * 1000:.1f} ms"
    )
    return (
        f"{bare.seconds * 1000:8.1f} ms ({bare.images / bare.seconds:7.1f} img/s), {bare.flops / 1e12:.2f} TFLOP/step, "
        f"{achieved:.1f} TFLOP/s, {mfu}, peak {bare.memory_gib:.1f} GiB{host}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--record", action="store_true", help="append the measured rates to benchmarks/results.jsonl")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs/training/demo.yaml"))
    parser.add_argument("--synthetic-images", type=int, default=0, help="train on N generated 500x375 JPEGs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--levers", action="store_true", help="the bare step with each speed lever, no loop")
    parser.add_argument(
        "--profile", action="store_true", help="the bare step's top operators (FSDP2-sharded under torchrun), no loop"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_tflops(device, args.peak_tflops)
    gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*args.overrides, f"run.output_dir={tmp}/run"]
        if args.synthetic_images:
            overrides.append(f"data.shards={synthetic_shards(Path(tmp) / 'shards', args.synthetic_images)}")
        config = load_config(TrainConfig, args.config, overrides)
        batch = config.data.batch_size_per_gpu
        subject = f"{config.model.arch}/{config.model.embed_dim or 'default'}x{config.model.depth or 'default'}"
        name = torch.cuda.get_device_name(device) if gpu else "cpu"
        print(f"device {name}, {config.model.arch}, batch {batch}, precision {config.run.precision}")
        if args.levers:
            for lever, bare in lever_table(args.config, overrides, args.steps, device):
                print(f"lever {lever:24s} {rate(bare, peak) if bare else 'out of memory'}")
                if args.record and bare:
                    record(
                        "benchmarks/train.py",
                        "train.bare_images_per_s",
                        bare.images / bare.seconds,
                        "images/s",
                        f"{subject}/{lever}",
                        gpu,
                    )
            return
        bare = bare_steps(
            config, args.steps, device, profile=args.profile, shard=args.profile and config.run.parallel == "fsdp"
        )
        print(f"bare step  {rate(bare, peak)}")
        if args.profile:
            return
        per_worker = crops_per_worker_second(config)
        print(
            f"loader     {per_worker:.1f} img/s per worker (multi-crop on one core): the bare step needs "
            f"{batch / bare.seconds / per_worker:.1f} workers, data.workers={config.data.workers}"
        )
        colour = colour_seconds(config, device)
        print(
            f"colour     {colour * 1000:.1f} ms per batch on {device.type}, {colour / bare.seconds:.1%} of the bare step"
        )
        loop = loop_steps(config, args.steps)
        loop_memory = memory_peak(device)
    print(
        f"train loop {loop * 1000:8.1f} ms ({batch / loop:7.1f} img/s), {config.run.parallel}, peak {loop_memory:.1f} GiB"
    )
    print(f"ratio {bare.seconds / loop:.2f}  (target >= 0.95; >= 0.90 under FSDP2)")
    if args.record:
        subject += f"/{config.run.parallel}"
        record("benchmarks/train.py", "train.images_per_s", batch / loop, "images/s", subject, gpu)
        record("benchmarks/train.py", "train.loop_ratio", bare.seconds / loop, "ratio", subject, gpu)
        record("benchmarks/train.py", "train.loader_images_per_s_per_worker", per_worker, "images/s", subject, gpu)
        record(
            "benchmarks/train.py", "train.colour_share_of_bare_step", colour / bare.seconds, "fraction", subject, gpu
        )
        if peak:
            record(
                "benchmarks/train.py",
                "train.bare_mfu",
                bare.flops / bare.seconds / 1e12 / peak,
                "fraction",
                subject,
                gpu,
            )


if __name__ == "__main__":
    main()
