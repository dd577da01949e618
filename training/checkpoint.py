"""Resumable checkpoints with `torch.distributed.checkpoint` (DCP), and the exported backbone.

A checkpoint holds the student, teacher, target centres, optimiser state and the trainer state
(step, images seen). DCP stores each tensor once with its global shape, so a run saved on N ranks
(DDP or FSDP2) resumes on M ranks. Each checkpoint is written to `step_XXXXXXXX.partial` and
renamed by rank 0 after every rank has finished, so a run killed mid-save resumes from the last
complete one; only the newest `keep` checkpoints are kept.

The export (`export/teacher_backbone.pth`) is a plain state dict of the teacher backbone in the
official DINOv2 layout, with `export/backbone.json` describing its shape: the `lvd:<export dir>`
embedder, and so `lvd eval` and the curation embed stage, load the pair.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from models.backbones import EXPORT_WEIGHTS, write_export
from models.vision_transformer import DinoVisionTransformer
from training.distributed import DistEnv, barrier

PREFIX = "step_"


@contextmanager
def single_process_quietly() -> Iterator[None]:
    """DCP warns on every single-process save/load that it 'assumes' one process; here that is the plan."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def complete_checkpoints(directory: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    done = [p for p in directory.iterdir() if p.name.startswith(PREFIX) and "." not in p.name]
    return sorted(done, key=lambda p: int(p.name.removeprefix(PREFIX)))


def save(
    directory: Path, step: int, images_seen: int, model: torch.nn.Module, optimizer, env: DistEnv, keep: int
) -> Path:
    final = directory / f"{PREFIX}{step:08d}"
    partial = final.with_name(final.name + ".partial")
    if env.is_main:
        shutil.rmtree(partial, ignore_errors=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "trainer": {"step": step, "images_seen": images_seen}}
    with single_process_quietly():
        dcp.save(state, checkpoint_id=partial, no_dist=not dist.is_initialized())
    barrier()
    if env.is_main:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in complete_checkpoints(directory)[:-keep]:
            shutil.rmtree(old)
    barrier()
    return final


def load_latest(directory: Path, model: torch.nn.Module, optimizer) -> tuple[int, int]:
    """Restore the newest complete checkpoint in place; (step, images_seen), or (0, 0) if none."""
    found = complete_checkpoints(directory)
    if not found:
        return 0, 0
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "trainer": {"step": 0, "images_seen": 0}}
    with single_process_quietly():
        dcp.load(state, checkpoint_id=found[-1], no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["trainer"]["step"]), int(state["trainer"]["images_seen"])


def export_backbone(backbone: DinoVisionTransformer, directory: Path, env: DistEnv) -> Path:
    """Write the full (unsharded) backbone state dict and its `spec` on rank 0; return the .pth path."""
    state = get_model_state_dict(backbone, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path = directory / EXPORT_WEIGHTS
    if env.is_main:
        write_export(state, backbone.spec, directory)
    barrier()
    return path
