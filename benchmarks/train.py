"""Training-loop throughput as a ratio to the bare student+teacher step on batches made in advance.

    python benchmarks/train.py [--steps 40] [--config configs/training/demo.yaml] [key=value ...]

Both sides use the same model, batch size and crops. The bare side times forward, loss,
backward, AdamW and the EMA update on multi-crop batches already in memory; the loop side is
`train()` itself (WebDataset reading, JPEG decoding and multi-crop in loader workers, schedules,
NaN checks, metrics, one checkpoint at the end), timed from its metrics log after the first
logged window. The ratio says what the input pipeline and bookkeeping cost: a loop that waits
for data falls well below 1. Target: >= 0.9 (on GPU, with enough loader workers per GPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from curation.config import load_config
from curation.measurements import record
from training.config import TrainConfig
from training.data import loader_for
from training.optim import Schedules, build_optimizer
from training.student_teacher import DinoV2, compute_losses
from training.train_loop import train


def bare_steps(config: TrainConfig, steps: int, device: torch.device) -> float:
    """Seconds per step of the model alone, batches prepared before the clock starts."""
    loader = loader_for(config, rank=0, start_step=0, workers=0)
    batches = [next(loader).to(device) for _ in range(min(steps, 8))]
    model = DinoV2(config).to(device)
    optimizer = build_optimizer(model.student, config)
    schedules = Schedules.from_config(config, 1)
    timed = 0.0
    for step in range(steps + 1):
        start = time.perf_counter()
        values = schedules.apply(optimizer, step)
        parts = compute_losses(model, model.student, batches[step % len(batches)], values["teacher_temp"])
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()
        model.after_step(values["momentum"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up allocators and kernels
            timed += time.perf_counter() - start
    return timed / steps


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
    parser.add_argument("--record", action="store_true", help="append the measured rate to benchmarks/results.jsonl")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs/training/demo.yaml"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(TrainConfig, args.config, [*args.overrides, f"run.output_dir={tmp}"])
        bare = bare_steps(config, args.steps, device)
        loop = loop_steps(config, args.steps)
    print(f"device {device}, batch {config.data.batch_size_per_gpu}, loader workers {config.data.workers}")
    print(f"bare step  {bare * 1000:8.1f} ms   ({config.data.batch_size_per_gpu / bare:7.1f} img/s)")
    print(f"train loop {loop * 1000:8.1f} ms   ({config.data.batch_size_per_gpu / loop:7.1f} img/s)")
    print(f"ratio {bare / loop:.2f}  (target >= 0.9)")
    if args.record:
        subject = f"{config.model.arch}/{config.model.embed_dim or 'default'}x{config.model.depth or 'default'}"
        gpu = device.type == "cuda"
        record(
            "benchmarks/train.py", "train.images_per_s", config.data.batch_size_per_gpu / loop, "images/s", subject, gpu
        )


if __name__ == "__main__":
    main()
