"""The shared body of the torchrun entry points: parse CONFIG and overrides, run, print one summary line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from foundation.config import load_config
from pipelines.entry import exit_code_of
from training.config import TrainConfig
from training.train_loop import TrainResult


def run_entry_point(
    usage: str, model: type[TrainConfig], run: Callable[[TrainConfig], TrainResult], verb: str, argv: list[str] | None
) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    return exit_code_of(lambda: _run_and_report(run, load_config(model, args[0], args[1:]), verb))


def _run_and_report(run: Callable[[TrainConfig], TrainResult], config: TrainConfig, verb: str) -> None:
    result = run(config)
    print(
        f"{verb}: {result.steps} steps, {result.images_seen} images, final loss {result.final_loss:.4f}, "
        f"model exported to {result.export.parent}"
    )
