"""Run the training loop on a Ray cluster with Ray Train's `TorchTrainer`.

Ray starts one worker per GPU (or CPU slot), creates the process group and sets the rank
variables; each worker then runs `train_loop.train`, unchanged, exactly as under torchrun.
Checkpoints go to the config's `run.output_dir`, which must be storage every worker sees.
"""

from __future__ import annotations

from pathlib import Path

from foundation.config import load_config
from training.config import TrainConfig


def _worker(options: dict) -> None:
    from training.train_loop import train

    train(load_config(TrainConfig, options["config"], options["overrides"]))


def train_on_ray(config_path: str | Path, overrides: list[str], workers: int, use_gpu: bool) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = load_config(TrainConfig, config_path, overrides)  # fail on a bad config before Ray starts
    output = Path(config.run.output_dir).resolve()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": str(Path(config_path).resolve()), "overrides": list(overrides)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name="lvd-train", storage_path=str(output / "ray")),
    )
    trainer.fit()
