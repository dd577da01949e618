"""`python -m pipelines.pretrain CONFIG [key=value ...]`: what torchrun (or `lvd train`) runs.

torchrun --nproc-per-node 8 -m pipelines.pretrain configs/training/vitl14.yaml data.shards=/data/curated
"""

from __future__ import annotations

import sys

from curation.config import load_config
from curation.errors import LvdError
from training.config import TrainConfig
from training.train_loop import train


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    try:
        result = train(load_config(TrainConfig, args[0], args[1:]))
    except LvdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"train: {result.steps} steps, {result.images_seen} images, final loss {result.final_loss:.4f}, "
        f"backbone exported to {result.export}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
