"""The pretraining config tree (`configs/training/*.yaml`), defaults as in DINOv2's `ssl_default_config.yaml`.

Learning rates are given per 1024 images (`optim.base_lr`) and scaled by √(global batch / 1024),
DINOv2's `sqrt_wrt_1024` rule, so one file serves any number of GPUs. Schedules are set in
epochs of `optim.epoch_length` steps (DINOv2's OFFICIAL_EPOCH_LENGTH = 1250).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from foundation.config import Section
from foundation.storage import ConfigPath, LocalPath


class ModelConfig(Section):
    arch: str = Field("vits14", description="vits14 | vitb14 | vitl14 | vitg14, optionally with _reg")
    patch_size: int = 14
    embed_dim: int | None = Field(None, description="override the arch's width (small demo models)")
    depth: int | None = None
    num_heads: int | None = None
    ffn_layer: Literal["mlp", "swiglufused"] | None = Field(
        None, description="override the arch's feed-forward (DINOv2 trains its ViT-L from scratch with SwiGLU)"
    )
    drop_path_rate: float = 0.1
    drop_path_uniform: bool = Field(
        True, description="every block at drop_path_rate, as DINOv2 (above 0.1 a block computes only the kept samples)"
    )
    layerscale: float = 1e-5


class HeadConfig(Section):
    prototypes: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3


class LossConfig(Section):
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: Literal["centering", "sinkhorn_knopp"] = "centering"
    student_temp: float = 0.1
    separate_ibot_head: bool = False
    mask_probability: float = Field(0.5, ge=0, le=1)
    mask_ratio: tuple[float, float] = (0.1, 0.5)


class TeacherConfig(Section):
    momentum: float = 0.992
    final_momentum: float = 1.0
    temp: float = 0.07
    warmup_temp: float = 0.04
    warmup_temp_epochs: float = 30


class OptimConfig(Section):
    epochs: int = 100
    epoch_length: int = 1250
    base_lr: float = Field(0.004, description="at a global batch of 1024; scaled by sqrt(batch / 1024)")
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float | None = 3.0
    freeze_last_layer_epochs: float = 1
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    fused: bool = Field(True, description="fused AdamW kernels on CUDA (foreach elsewhere)")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.epoch_length


class CropsConfig(Section):
    global_size: int = 224
    local_size: int = Field(98, description="DINOv2 uses 96 for patch 16 and 98 for patch 14")
    local_number: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)


class DataConfig(Section):
    execution_fields = frozenset({"workers"})
    shards: ConfigPath = Field(..., description="curated shard folder or brace pattern (…/{000000..000099}.tar)")
    batch_size_per_gpu: int = Field(64, ge=1)
    workers: int = Field(8, ge=0)
    shuffle_buffer: int = 1000


class RunConfig(Section):
    execution_fields = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "profile_steps"})
    output_dir: LocalPath = Field(..., description="checkpoints/, metrics.jsonl and export/ go here")
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    parallel: Literal["ddp", "fsdp"] = "ddp"
    block_chunks: int = Field(
        0,
        ge=0,
        description="FSDP2 shards the blocks in at most this many units (DINOv2's block_chunks); 0: one per block",
    )
    log_every: int = 10
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = 2
    max_steps: int | None = Field(None, description="stop early (the schedules still span optim.epochs)")
    compile: bool = Field(
        False,
        description="torch.compile each transformer block and the prototype losses (CUDA; compiles on the first steps)",
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each student block in backward: less memory for a larger batch (ViT-g)"
    )
    profile_steps: tuple[int, int] | None = Field(
        None, description="[A, B]: profile the steps after A up to B; profile.txt and a trace in output_dir"
    )

    @field_validator("profile_steps")
    @classmethod
    def _window(cls, window: tuple[int, int] | None) -> tuple[int, int] | None:
        if window is not None and not 0 <= window[0] < window[1]:
            raise ValueError(f"profile_steps must be [A, B] with 0 <= A < B, not {list(window)}")
        return window


class TrainConfig(Section):
    run: RunConfig
    data: DataConfig
    model: ModelConfig = ModelConfig()
    dino_head: HeadConfig = HeadConfig()
    ibot_head: HeadConfig = HeadConfig()
    loss: LossConfig = LossConfig()
    teacher: TeacherConfig = TeacherConfig()
    optim: OptimConfig = OptimConfig()
    crops: CropsConfig = CropsConfig()

    @model_validator(mode="after")
    def _crops_fit_patches(self) -> TrainConfig:
        for name in ("global_size", "local_size"):
            size = getattr(self.crops, name)
            if size % self.model.patch_size:
                raise ValueError(f"crops.{name}={size} is not a multiple of model.patch_size={self.model.patch_size}")
        return self
