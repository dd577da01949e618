"""Embed-stage throughput as a ratio to a bare loop of `model(x)` on the same preprocessed tensors.

    python benchmarks/embed.py [--images 2000] [--model dinov2:vits14] [--batch-size 32] [--gpu]
        [--executor ray|local] [--decode auto|cpu|device]

Both sides run the same model (random weights: speed does not depend on them) at the same batch
size. The bare side times only the forward passes over tensors prepared in advance; the stage
side is the real embed stage through Ray Data (shard reading, JPEG decoding, preprocessing,
the actor pool, parquet writing), timed after Ray has started. Target (issue 4): >= 0.90 on CPU
with a ViT-S-sized model.

The stage pays a fixed start-up the bare loop does not: Ray Data planning, the actor's process,
imports and model build, and a first (warm-up) batch, about 5.5 s on 2 cores. Per batch it runs
within 3% of the bare loop (3.0 s against 2.9 s for 32 images of ViT-S/14), so the ratio depends
on how many images amortise the start-up: 0.73-0.86 over 640 images, 0.91 over 2,000 (default);
a real shard run lasts hours. With --gpu the model runs on one GPU in fp16 (e.g. timm:vit_huge_patch14_224).
`--executor local` runs the stage in this process (decode prefetched on threads), as a GPU box
without Ray does; `--decode device` decodes the JPEGs beside the model (nvjpeg on a GPU).

It also prints how many CPU cores the whole machine kept busy during the stage. With --gpu and
--record that is recorded per image (`embed.core_seconds_per_image`), which `--plan` turns into
cores per GPU for its fleet (target, issue 18: at most 2 per GPU with ViT-H/14).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from curation.measurements import record
from curation.pipeline import curate
from curation.run_config import CurationConfig
from curation.shards import iter_samples
from curation.synth.crawl import make_crawl
from foundation.config import validate_tree
from foundation.ray_session import connect_ray
from models.embedders import create_embedder


def bare_forward(model_name: str, batches: list[np.ndarray], device: str, precision: str) -> float:
    """Seconds for `model(x)` over already-normalised float tensors (one warm-up batch excluded)."""
    embedder = create_embedder(model_name, weights="random", device=device, precision=precision)
    mean, std = embedder._mean, embedder._std
    tensors = [((torch.as_tensor(b).permute(0, 3, 1, 2).float().to(device) - mean) / std) for b in batches]
    amp = torch.autocast(device, dtype=torch.float16, enabled=device == "cuda")
    with torch.inference_mode(), amp:
        embedder.model(tensors[0])
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for x in tensors:
            embedder.model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="dinov2:vits14")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray", help="Ray Data, or in this process")
    parser.add_argument("--decode", choices=("auto", "cpu", "device"), default="auto", help="embed.decode")
    parser.add_argument("--record", action="store_true", help="append the measured rate to benchmarks/results.jsonl")
    args = parser.parse_args()
    device, precision = ("cuda", "fp16") if args.gpu else ("cpu", "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        crawl = make_crawl(Path(tmp) / "crawl", images=args.images + 40, seed=0)
        tree = {
            "ingest": {"sources": [{"kind": "folder", "path": str(crawl / "pool")}], "shard_size": 128},
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
                "decode": args.decode,
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

        if args.executor == "ray":
            connect_ray()
        started, busy_before = time.perf_counter(), cpu_busy_seconds()
        curate(config, run_dir, ("ingest", "embed"), executor=args.executor)
        stage, busy = time.perf_counter() - started, cpu_busy_seconds() - busy_before
        shutil.rmtree(run_dir)
    print(
        f"model {args.model} on {device} ({precision}), batch {args.batch_size}, {n} images, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"bare model(x) loop : {n / bare:8.1f} images/s")
    print(f"embed stage ({args.executor:<5}): {n / stage:8.1f} images/s  (decode {args.decode})")
    print(f"ratio stage/bare   : {bare / stage:.2f}  (target >= 0.90)")
    print(f"CPU cores busy     : {busy / stage:8.1f}  ({busy / n * 1000:.2f} core-ms per image, whole machine)")
    if args.record:
        record("benchmarks/embed.py", "embed.images_per_s", n / stage, "images/s", args.model, gpu=args.gpu)
        if args.gpu:  # what --plan counts cores per GPU from (on CPU the model's own compute is in it)
            record(
                "benchmarks/embed.py",
                "embed.core_seconds_per_image",
                busy / n,
                "core-s/image",
                f"decode={args.decode}",
                gpu=True,
            )


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, over all cores (Linux /proc/stat):
    Ray's workers and the loader's threads count as much as this process."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
