"""Process-group setup shared by every launcher, and the DDP / FSDP2 wrapping of the student.

torchrun exports RANK/WORLD_SIZE/LOCAL_RANK and a rendezvous address; Ray Train's TorchTrainer
creates the process group itself before calling the loop. Either way the loop asks `init()` and
gets the same answer, and a plain `python` process runs as world size 1 with no group at all.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from foundation.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> DistEnv:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    launched = "MASTER_ADDR" in os.environ and "RANK" in os.environ  # torchrun, even with one process
    if not dist.is_initialized() and launched:
        if device.type == "cuda":  # bound to its GPU, so a barrier need not guess which one
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return DistEnv(0, 1, 0, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_student(
    student: nn.Module,
    followers: list[nn.Module],
    parallel: str,
    env: DistEnv,
    dtype: torch.dtype,
    block_chunks: int = 0,
) -> nn.Module:
    """The module the loop calls for the student's forward: itself, DDP, or FSDP2-sharded per block
    or per `block_chunks` runs of blocks (`fsdp_units`).

    With FSDP2 the `followers` (EMA copies) are sharded the same way, so their EMA update is
    elementwise on local shards.
    """
    if parallel == "fsdp":
        if not dist.is_initialized():
            raise ConfigError("run.parallel=fsdp needs a process group: launch with torchrun or Ray Train")
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # The student returns slices of its logits; FSDP2 warns that an in-place op on such a view
        # would skip its pre-backward hook. The losses only read them, so the warning is noise.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for module in (student, *followers):
            # The student stays gathered from forward into backward, as DINOv2's SHARD_GRAD_OP:
            # each of its blocks is gathered once a step rather than twice (forward, on both crop
            # sizes at once, and again in backward), and FSDP2's per-parameter Python work for
            # each gather is most of its host time. It costs the student's bf16 weights between
            # forward and backward (2.2 GB for ViT-g); fp32 weights, gradients and AdamW states
            # stay sharded. A follower has no backward to reshard it, so it must
            # reshard after forward, or its parameters would stay gathered and the EMA would mix
            # DTensors with tensors.
            reshard = module is not student
            for unit in fsdp_units(module.backbone.blocks, block_chunks):
                fully_shard(unit, mp_policy=policy, reshard_after_forward=reshard)
            fully_shard(module, mp_policy=policy, reshard_after_forward=reshard)
        return student
    if env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(student, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    return student


def fsdp_units(blocks: nn.ModuleList, chunks: int) -> list[nn.Module | list[nn.Module]]:
    """The transformer blocks as FSDP2 units: one per block when `chunks` is 0, else at most
    `chunks` runs of consecutive blocks, each gathered and reduced as one, as DINOv2's
    `block_chunks` wraps them.

    FSDP2's hooks and collectives are per unit, and on one GPU its host work nearly sets the
    pace. On a CPU stand-in for ViT-L (its tensors at width 32, one gloo rank), 4 units of 6
    blocks instead of 24 cut backward's Python calls from 50k to 34k a step and the step from
    about 108 to 96 ms. A unit's gathered weights are held together: 6 of ViT-L's blocks are
    150 MB in bf16, 10 of ViT-g's 0.9 GB.
    """
    if chunks <= 0:
        return list(blocks)
    size = math.ceil(len(blocks) / chunks)
    return [list(blocks[start : start + size]) for start in range(0, len(blocks), size)]


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place updates reach the DTensor), else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
