"""`python -m pipelines.distill CONFIG [key=value ...]`: what torchrun (or `lvd distill`) runs.

torchrun --nproc-per-node 8 -m pipelines.distill configs/training/distill_vits14.yaml
"""

from __future__ import annotations

import sys

from pipelines.launch import run_entry_point
from training.distill import DistillConfig, distill


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__doc__, DistillConfig, distill, "distill", argv)


if __name__ == "__main__":
    sys.exit(main())
