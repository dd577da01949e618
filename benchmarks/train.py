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

FLOPs of one bare step are counted with `torch.utils.flop_counter.FlopCounterMode`; MFU is the
achieved rate over the GPU's dense bf16 peak (`--peak-tflops`, else the table below by device
name). Target on H100/H200: bare-step MFU >= 45% for the vitl14 and vitg14 recipes.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from curation.measurements import record
from curation.shards import ShardWriter
from curation.synth.concepts import PROCEDURAL
from foundation.config import load_config
from training.config import TrainConfig
from training.data import loader_for
from training.optim import Schedules, build_optimizer
from training.student_teacher import DinoV2, compute_losses
from training.train_loop import autocast_dtype, autocast_for, train

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "GH200": 989.4, "B200": 2250.0, "A100": 312.0, "L40S": 362.1}
"""Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), matched against the device name."""


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def synthetic_shards(out: Path, images: int, size: tuple[int, int] = (500, 375), per_shard: int = 500) -> Path:
    """Web-sized procedural JPEGs (500x375, as a typical crawled photo) in WebDataset shards."""
    rng = np.random.default_rng(0)
    concepts = sorted(PROCEDURAL)
    out.mkdir(parents=True, exist_ok=True)
    for shard in range(0, images, per_shard):
        with ShardWriter(out / f"{shard // per_shard:06d}.tar") as writer:
            for i in range(shard, min(shard + per_shard, images)):
                buffer = io.BytesIO()
                PROCEDURAL[concepts[i % len(concepts)]](rng, size).save(buffer, format="JPEG", quality=90)
                writer.write(f"{i:08d}", {"jpg": buffer.getvalue(), "json": b"{}"})
    return out


def memory_peak(device: torch.device) -> float:
    """GiB allocated at most since the last call (0 on CPU)."""
    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def bare_steps(config: TrainConfig, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step of the model alone, batches prepared before the clock starts, and the FLOPs
    of one step (forward and backward; the optimizer and EMA are elementwise and not counted)."""
    loader = loader_for(config, rank=0, start_step=0, workers=0)
    batches = [next(loader).to(device) for _ in range(min(steps, 8))]
    model = DinoV2(config).to(device)
    optimizer = build_optimizer(model.student, config)
    schedules = Schedules.from_config(config, 1)
    autocast = autocast_for(autocast_dtype(config.run.precision, device), device)

    def step_once(step: int) -> None:
        values = schedules.apply(optimizer, step)
        with autocast:
            parts = compute_losses(model, model.student, batches[step % len(batches)], values["teacher_temp"])
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()
        model.after_step(values["momentum"])

    with FlopCounterMode(display=False) as counter:
        step_once(0)  # also warms up allocators and kernels
    timed = 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        step_once(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timed += time.perf_counter() - start
    return timed / steps, float(counter.get_total_flops())


def loop_steps(config: TrainConfig, steps: int) -> float:
    """Seconds per step of `train()`, from its own images/s log, skipping the first window."""
    log_every = 5
    tree = config.model_dump()
    tree["run"].update(max_steps=steps + log_every, log_every=log_every, checkpoint_every=10**9)
    train(TrainConfig.model_validate(tree))
    rows = [json.loads(line) for line in (Path(tree["run"]["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    images_per_s = sum(r["images_per_s"] for r in rows[1:]) / len(rows[1:])
    return config.data.batch_size_per_gpu / images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--record", action="store_true", help="append the measured rates to benchmarks/results.jsonl")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs/training/demo.yaml"))
    parser.add_argument("--synthetic-images", type=int, default=0, help="train on N generated 500x375 JPEGs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*args.overrides, f"run.output_dir={tmp}/run"]
        if args.synthetic_images:
            overrides.append(f"data.shards={synthetic_shards(Path(tmp) / 'shards', args.synthetic_images)}")
        config = load_config(TrainConfig, args.config, overrides)
        bare, flops = bare_steps(config, args.steps, device)
        peaks = {"bare": memory_peak(device)}
        loop = loop_steps(config, args.steps)
        peaks["loop"] = memory_peak(device)
    batch = config.data.batch_size_per_gpu
    achieved = flops / bare / 1e12
    peak = peak_tflops(device, args.peak_tflops)
    mfu = achieved / peak if peak else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, {config.model.arch}, batch {batch}, precision {config.run.precision}, {config.run.parallel}")
    print(f"bare step  {bare * 1000:8.1f} ms   ({batch / bare:7.1f} img/s)")
    print(f"train loop {loop * 1000:8.1f} ms   ({batch / loop:7.1f} img/s)")
    print(f"ratio {bare / loop:.2f}  (target >= 0.95; >= 0.90 under FSDP2)")
    if device.type == "cuda":
        print(f"peak memory: bare {peaks['bare']:.1f} GiB, loop {peaks['loop']:.1f} GiB")
    print(
        f"{flops / 1e12:.2f} TFLOP/step, {achieved:.1f} TFLOP/s achieved, "
        + (f"MFU {mfu:.1%} of {peak:.0f} TFLOP/s" if mfu else "MFU n/a (no peak for this device; --peak-tflops)")
    )
    if args.record:
        subject = f"{config.model.arch}/{config.model.embed_dim or 'default'}x{config.model.depth or 'default'}"
        subject += f"/{config.run.parallel}"
        gpu = device.type == "cuda"
        record("benchmarks/train.py", "train.images_per_s", batch / loop, "images/s", subject, gpu)
        record("benchmarks/train.py", "train.loop_ratio", bare / loop, "ratio", subject, gpu)
        if mfu:
            record("benchmarks/train.py", "train.bare_mfu", mfu, "fraction", subject, gpu)


if __name__ == "__main__":
    main()
