"""Distillation (DINOv2 §5): a frozen large teacher trains a smaller student on the same losses.

The student gets the teacher's DINO and iBOT targets on the usual multi-crop and masking
pipeline; the teacher is never updated; an EMA of the student is kept and is what the run
exports, as DINOv2 does. The teacher comes from either

- a training run of this project (`distill.teacher.run_dir`): its backbone *and* heads, from the
  run's latest checkpoint, so the student learns the teacher's own prototypes; or
- a backbone alone (`distill.teacher.backbone`: `dinov2:vitg14` with `weights`, or
  `lvd:<export dir>`), given freshly initialised, frozen heads: a fixed random projection of the
  teacher's features onto the prototypes.

The student's patch size and global crop size must equal the teacher's, because the iBOT
targets are the teacher's patch tokens at the student's masked positions.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.distributed.checkpoint as dcp
from pydantic import Field, model_validator
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from foundation.config import Section
from foundation.errors import ConfigError
from foundation.storage import ConfigPath, LocalPath
from models.backbones import is_export, load_backbone
from models.checkpoint import CheckpointError
from models.vision_transformer import DinoVisionTransformer
from training.checkpoint import complete_checkpoints, single_process_quietly
from training.config import TrainConfig
from training.heads import DINOHead
from training.student_teacher import DinoV2, Teacher, ibot_prototypes
from training.train_loop import TrainResult, train


class TeacherSource(Section):
    run_dir: LocalPath | None = Field(None, description="a training run of this project (backbone and heads)")
    backbone: str | None = Field(None, description="dinov2:<arch> (with weights) or lvd:<export dir>")
    weights: ConfigPath | None = Field(None, description="the dinov2:<arch> checkpoint (.pth, torch.hub layout)")
    precision: Literal["same", "fp32", "bf16"] = Field("same", description="teacher autocast dtype on CUDA")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSource:
        if (self.run_dir is None) == (self.backbone is None):
            raise ValueError("distill.teacher needs exactly one of run_dir or backbone")
        return self


class DistillSection(Section):
    teacher: TeacherSource


class DistillConfig(TrainConfig):
    distill: DistillSection


def load_teacher_run(run_dir: Path) -> tuple[Teacher, TrainConfig]:
    """The EMA teacher (backbone + heads) of a training run's newest complete checkpoint."""
    config_file = run_dir / "config.json"
    found = complete_checkpoints(run_dir / "checkpoints")
    if not config_file.is_file() or not found:
        raise CheckpointError(f"{run_dir} is not a finished training run: it needs config.json and checkpoints/step_*")
    config = TrainConfig.model_validate_json(config_file.read_text())
    model = DinoV2(config)
    state = get_model_state_dict(model)
    with single_process_quietly():
        dcp.load({"model": state}, checkpoint_id=found[-1])
    set_model_state_dict(model, state)
    return model.teacher, config


def build_teacher(config: DistillConfig) -> Teacher:
    source = config.distill.teacher
    if source.run_dir is not None:
        teacher, teacher_config = load_teacher_run(Path(source.run_dir))
        _check_same(teacher_config.dino_head.prototypes, config.dino_head.prototypes, "dino_head.prototypes")
        _check_same(ibot_prototypes(teacher_config), ibot_prototypes(config), "iBOT prototypes")
    else:
        if source.backbone.startswith("dinov2:") and source.weights is None:
            raise CheckpointError(f"teacher {source.backbone} needs distill.teacher.weights: a .pth checkpoint")
        backbone = load_backbone(source.backbone, source.weights)
        h, ih = config.dino_head, config.ibot_head
        dim = backbone.embed_dim
        dino_head = DINOHead(dim, h.prototypes, h.hidden_dim, h.bottleneck_dim, h.nlayers)
        ibot_head = (
            DINOHead(dim, ih.prototypes, ih.hidden_dim, ih.bottleneck_dim, ih.nlayers)
            if config.loss.separate_ibot_head
            else None
        )
        teacher = Teacher(backbone, dino_head, ibot_head)
    _check_same(teacher.backbone.patch_size, config.model.patch_size, "model.patch_size")
    if source.precision == "bf16":
        teacher.autocast_dtype = torch.bfloat16
    elif source.precision == "fp32":
        teacher.autocast_dtype = torch.float32
    return teacher.requires_grad_(False)


def _check_same(teacher_value: int, student_value: int, what: str) -> None:
    if teacher_value != student_value:
        raise ConfigError(
            f"{what}: the teacher has {teacher_value}, the student config {student_value}; they must match"
        )


class Distillation(DinoV2):
    """Student, frozen teacher, and the student's EMA (the exported model)."""

    def __init__(self, config: DistillConfig, teacher: Teacher):
        super().__init__(config)
        # The EMA copy DinoV2 made of the student stays, as the student's EMA; the teacher is replaced.
        self.student_ema, self.teacher = self.teacher, teacher

    def ema_modules(self) -> list[nn.Module]:
        return [self.student_ema, self.teacher]

    def after_step(self, momentum: float) -> None:
        self.student_ema.update(self.student, momentum)

    def exported_backbone(self) -> DinoVisionTransformer:
        return self.student_ema.backbone


def distill(config: DistillConfig) -> TrainResult:
    teacher = build_teacher(config)
    return train(config, partial(Distillation, teacher=teacher))


def teacher_overrides(teacher: Path) -> list[str]:
    """`--teacher PATH` as config overrides: a training run directory or a backbone export directory."""
    if (teacher / "config.json").is_file():
        return [f"distill.teacher.run_dir={teacher.resolve()}", "distill.teacher.backbone=null"]
    if is_export(teacher):
        return ["distill.teacher.run_dir=null", f"distill.teacher.backbone=lvd:{teacher.resolve()}"]
    raise ConfigError(
        f"--teacher {teacher}: expected a training run (config.json) or a backbone export (backbone.json); "
        "for an official DINOv2 checkpoint set distill.teacher.backbone=dinov2:<arch> distill.teacher.weights=<pth>"
    )
