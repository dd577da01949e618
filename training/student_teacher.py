"""Student and EMA teacher, and the DINOv2 loss that ties them (DINO + iBOT + KoLeo).

The student sees both global crops (some patches masked) and the local crops; the teacher sees
the unmasked global crops. DINO matches every student crop's CLS prototypes to the teacher's on
the *other* global crop; iBOT matches the student's masked patches to the teacher's patches at the
same positions; KoLeo spreads the student's global CLS tokens. Loss normalisation follows DINOv2's
`SSLMetaArch`, so loss values are comparable with its logs.

`Student.forward` is the whole student computation, so DDP or FSDP can wrap the student alone.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from models.vision_transformer import VIT_ARCHS, DinoVisionTransformer, ViTArch
from training.config import TrainConfig
from training.data import CropBatch
from training.distributed import local_shard
from training.heads import DINOHead
from training.losses import CenteredTargets, PrototypeLosses, koleo_loss
from training.masking import select_masked

NUM_GLOBAL_CROPS = 2


def build_backbone(config: TrainConfig, drop_path_rate: float | None = None) -> DinoVisionTransformer:
    """The configured ViT, with position embeddings stored for the global crop size (as DINOv2 trains)."""
    m = config.model
    base, _, suffix = m.arch.partition("_")
    if base not in VIT_ARCHS or suffix not in ("", "reg"):
        raise ValueError(f"model.arch {m.arch!r}: choose from {sorted(VIT_ARCHS)} with an optional '_reg'")
    arch = VIT_ARCHS[base]
    arch = ViTArch(
        m.embed_dim or arch.embed_dim,
        m.depth or arch.depth,
        m.num_heads or arch.num_heads,
        m.ffn_layer or arch.ffn_layer,
    )
    return DinoVisionTransformer(
        arch,
        patch_size=m.patch_size,
        img_size=config.crops.global_size,
        num_register_tokens=4 if suffix == "reg" else 0,
        init_values=m.layerscale,
        drop_path_rate=m.drop_path_rate if drop_path_rate is None else drop_path_rate,
        drop_path_uniform=m.drop_path_uniform,
    )


class StudentOutput(NamedTuple):
    """What `Student.forward` returns: a NamedTuple, because FSDP2 finds the forward's output tensors
    with torch's pytree to hook their backward (where it re-gathers the root's sharded parameters),
    and pytree walks into tuples but treats a plain dataclass as one opaque leaf. With a dataclass,
    the heads' and patch embedding's parameters stayed freed after forward and the first CUDA
    backward failed (`setStorage: ... out of bounds for storage of size 0`)."""

    global_cls: torch.Tensor  # (2B)×D backbone CLS tokens, for KoLeo
    global_logits: torch.Tensor  # (2B)×K
    local_logits: torch.Tensor  # (L·B)×K
    masked_logits: torch.Tensor  # M×K', the masked global patches in masks[masks] order


class Student(nn.Module):
    def __init__(self, config: TrainConfig):
        super().__init__()
        self.backbone = build_backbone(config)
        self.backbone.activation_checkpointing = config.run.activation_checkpointing
        dim = self.backbone.embed_dim
        h = config.dino_head
        self.dino_head = DINOHead(dim, h.prototypes, h.hidden_dim, h.bottleneck_dim, h.nlayers)
        if config.loss.separate_ibot_head:
            h = config.ibot_head
            self.ibot_head = DINOHead(dim, h.prototypes, h.hidden_dim, h.bottleneck_dim, h.nlayers)
        else:
            self.ibot_head = None

    def forward(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor, masks: torch.Tensor, mask_rows: torch.Tensor
    ) -> StudentOutput:
        crops = [global_crops, local_crops] if local_crops.numel() else [global_crops]
        features = self.backbone.forward_features_list(crops, [masks, None][: len(crops)])  # one pass for both
        global_cls = features[0]["x_norm_clstoken"]
        masked = select_masked(features[0]["x_norm_patchtokens"], mask_rows)
        parts = [global_cls] + [local["x_norm_clstoken"] for local in features[1:]]
        if self.ibot_head is None:
            parts.append(masked)
        logits = self.dino_head(torch.cat(parts))
        n_global = global_cls.shape[0]
        n_local = logits.shape[0] - n_global - (masked.shape[0] if self.ibot_head is None else 0)
        global_logits, local_logits = logits[:n_global], logits[n_global : n_global + n_local]
        if self.ibot_head is None:
            masked_logits = logits[n_global + n_local :]
        else:
            masked_logits = self.ibot_head(masked)
        return StudentOutput(global_cls, global_logits, local_logits, masked_logits)


class Teacher(nn.Module):
    """Backbone and heads that produce targets and are never trained by gradients.

    In pretraining it is the student's EMA (`ema_of`); in distillation a frozen pretrained model,
    which may run in its own `autocast_dtype` (e.g. a bf16 ViT-g teacher for an fp32 student).
    """

    def __init__(
        self,
        backbone: DinoVisionTransformer,
        dino_head: DINOHead,
        ibot_head: DINOHead | None,
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.backbone, self.dino_head, self.ibot_head = backbone, dino_head, ibot_head
        self.autocast_dtype = autocast_dtype
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # see `update`
        for block in self.backbone.blocks:
            block.drop_path1.drop_prob = block.drop_path2.drop_prob = 0.0
        self.requires_grad_(False)

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) makes its own lists: these views would point at our tensors."""
        return {**super().__getstate__(), "_pairs": None}

    @classmethod
    def ema_of(cls, student: Student) -> Teacher:
        return cls(copy.deepcopy(student.backbone), copy.deepcopy(student.dino_head), copy.deepcopy(student.ibot_head))

    @torch.no_grad()
    def forward(self, global_crops: torch.Tensor, mask_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS logits with the two crops' halves swapped, and patch logits at the student's masked
        positions (`mask_rows`: flat indices into the crops' patch tokens)."""
        if self.autocast_dtype is None:
            return self._logits(global_crops, mask_rows)
        with torch.autocast(global_crops.device.type, self.autocast_dtype):
            return self._logits(global_crops, mask_rows)

    def _logits(self, global_crops: torch.Tensor, mask_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.forward_features(global_crops)
        cls = features["x_norm_clstoken"]
        cls = torch.cat(cls.chunk(NUM_GLOBAL_CROPS)[::-1])
        masked = select_masked(features["x_norm_patchtokens"], mask_rows)
        if self.ibot_head is None:
            logits = self.dino_head(torch.cat([cls, masked]))
            return logits[: cls.shape[0]], logits[cls.shape[0] :]
        return self.dino_head(cls), self.ibot_head(masked)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """teacher ← m·teacher + (1−m)·student, over all parameters in one `_foreach` call.

        Under FSDP2 both sides are DTensors sharded alike, so the update runs on the local shards:
        a DTensor op pays Python dispatch per tensor, hundreds of times a step for a ViT-L.

        The two lists are made on the first call and kept: walking both models' parameters every
        step made a third of an unsharded step's Python calls (13.6k of 39k for ViT-L's tensors
        on a CPU stand-in), at a pace the host nearly sets on a GPU. Keeping them is safe for the
        reason the optimizer's own lists are: parameters (and FSDP2's sharded ones, whose local
        shards these are views of) are updated in place for the life of a run, by AdamW, by this
        EMA and by checkpoint loading alike.
        """
        if self._pairs is None:
            self._pairs = (
                [local_shard(p) for _, p in sorted(self.named_parameters())],
                [local_shard(p.detach()) for _, p in sorted(student.named_parameters())],
            )
        torch._foreach_lerp_(*self._pairs, 1.0 - momentum)


class DinoV2(nn.Module):
    """Everything a checkpoint holds besides the optimiser: student, teacher, and the target centres."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        self.student = Student(config)
        self.teacher = Teacher.ema_of(self.student)
        self.dino_targets = CenteredTargets(config.dino_head.prototypes, config.loss.centering)
        self.ibot_targets = CenteredTargets(ibot_prototypes(config), config.loss.centering)
        self.losses = PrototypeLosses()

    def compile_parts(self) -> None:
        """`torch.compile` the step's parts that run as many small kernels: every transformer block
        of the student and its followers, and the prototype losses (`PrototypeLosses.compiled`).

        Blocks, not the backbone: the student calls `forward_features_list`, which compiling the
        backbone module would not reach. In place, so state-dict keys stay DINOv2's; and before
        FSDP2 wraps them, so its hooks stay outside the compiled code. Shapes are static: a block
        sees two inputs (the student's global and local crops together, the teacher's global
        crops), each compiled once and shared by every block of the same rate.
        """
        for module in (self.student, *self.ema_modules()):
            for block in module.backbone.blocks:
                block.compile(dynamic=False)
        self.losses = PrototypeLosses.compiled()

    def ema_modules(self) -> list[nn.Module]:
        """Modules that follow the student and so are sharded like it (FSDP2)."""
        return [self.teacher]

    def after_step(self, momentum: float) -> None:
        self.teacher.update(self.student, momentum)

    def exported_backbone(self) -> DinoVisionTransformer:
        """The model a run delivers: the EMA teacher's backbone, as DINOv2 reports."""
        return self.teacher.backbone


def ibot_prototypes(config: TrainConfig) -> int:
    return config.ibot_head.prototypes if config.loss.separate_ibot_head else config.dino_head.prototypes


def compute_losses(model: DinoV2, student: nn.Module, batch: CropBatch, teacher_temp: float) -> dict[str, torch.Tensor]:
    """Loss parts and their weighted `total`; `student` is `model.student` or its DDP/FSDP wrapper.
    A batch straight from the loader is coloured first, on the device it is on."""
    loss = model.config.loss
    batch = batch.coloured()
    teacher_cls, teacher_masked = model.teacher(batch.global_crops, batch.mask_rows)
    cls_targets = model.dino_targets(teacher_cls, teacher_temp)
    masked_targets = model.ibot_targets(teacher_masked, teacher_temp)
    out: StudentOutput = student(batch.global_crops, batch.local_crops, batch.masks, batch.mask_rows)

    n_local = out.local_logits.shape[0] // batch.batch_size
    global_pairs, local_pairs = NUM_GLOBAL_CROPS, max(n_local * NUM_GLOBAL_CROPS, 1)
    tau, losses = loss.student_temp, model.losses
    # The swapped teacher halves pair each student global crop with the other view: one batched mean
    # over 2B rows, times 2, is the sum over the two pairs.
    dino_global = losses.dino(out.global_logits[None], cls_targets[None], tau) * NUM_GLOBAL_CROPS
    if n_local:  # each local crop against both global ones
        local_views = out.local_logits.unflatten(0, (n_local, -1))
        dino_local = losses.dino(local_views, cls_targets.unflatten(0, (NUM_GLOBAL_CROPS, -1)), tau)
    else:
        dino_local = out.local_logits.sum() * 0.0
    parts = {
        "dino_global": dino_global / (global_pairs + local_pairs),
        "dino_local": dino_local / (global_pairs + local_pairs),
        "ibot": losses.ibot(out.masked_logits, masked_targets, batch.mask_weights, len(batch.masks), tau),
        "koleo": sum(koleo_loss(chunk) for chunk in out.global_cls.chunk(NUM_GLOBAL_CROPS)),
    }
    parts["total"] = (
        loss.dino_weight * (parts["dino_global"] + parts["dino_local"])
        + loss.ibot_weight * parts["ibot"]
        + loss.koleo_weight * parts["koleo"]
    )
    return parts
