"""`python -m pipelines.pretrain CONFIG [key=value ...]`: what torchrun (or `lvd train`) runs.

torchrun --nproc-per-node 8 -m pipelines.pretrain configs/training/vitl14.yaml data.shards=/data/curated
"""

from __future__ import annotations

import sys

from pipelines.launch import run_entry_point
from training.config import TrainConfig
from training.train_loop import train


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__doc__, TrainConfig, train, "train", argv)


if __name__ == "__main__":
    sys.exit(main())
