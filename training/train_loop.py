"""The one DINOv2 training loop, used by `lvd train`, torchrun and Ray Train alike.

Per step: batch to the device and colour-augmented there → schedules → forward under autocast →
loss parts watched for NaN/inf → backward → grad clip → AdamW step → teacher EMA. Every
`log_every` steps rank 0 appends a line to `metrics.jsonl` (loss parts, lr, wd, momentum, teacher
temperature, images/s); every `checkpoint_every` steps and at the end a DCP checkpoint is
written, and at the end the teacher backbone is exported for evaluation and for the embed stage.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from foundation.errors import LvdError
from training import checkpoint
from training.colour import colour_for
from training.config import TrainConfig
from training.data import loader_for
from training.distributed import DistEnv, init, wrap_student
from training.optim import Schedules, build_optimizer, clip_grad_norm_
from training.profiling import StepProfiler
from training.student_teacher import DinoV2, compute_losses


class TrainingDiverged(LvdError):
    """A loss part became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    steps: int
    images_seen: int
    final_loss: float
    export: Path


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def autocast_for(dtype: torch.dtype, device: torch.device) -> AbstractContextManager:
    """What the forward and loss run under: autocast to `dtype`, or nothing for fp32."""
    return torch.autocast(device.type, dtype) if dtype != torch.float32 else nullcontext()


SHAPE_SECTIONS = ("model", "dino_head", "ibot_head", "crops")


def check_resumable(config: TrainConfig, out: Path) -> None:
    """Refuse to resume checkpoints of a differently shaped model, before anything loads them."""
    saved = out / "config.json"
    if not saved.is_file() or not checkpoint.complete_checkpoints(out / "checkpoints"):
        return
    before = json.loads(saved.read_text())
    now = json.loads(config.model_dump_json())
    # Settings added to the config since the run was saved are not compared: that run could not set them.
    changed = [f"{s}.{k}" for s in SHAPE_SECTIONS for k in now[s] if before.get(s, {}).get(k, now[s][k]) != now[s][k]]
    if changed:
        raise LvdError(
            f"{out} holds checkpoints of a run with different {', '.join(changed)}; "
            "resume with the same settings or choose a new run.output_dir"
        )


class FiniteWatch:
    """NaN/inf watch over the loss parts without a host sync every step.

    Each step ANDs, on the device, whether every part is finite; `check` reads the flags once (at
    logging and checkpoint steps), names the part that went bad and the steps it went bad between,
    and so stops the run before it checkpoints a diverged model. A per-step `.item()` would stall
    a GPU's queue once a step.
    """

    def __init__(self) -> None:
        self.flags: torch.Tensor | None = None
        self.names: list[str] = []
        self.since = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        self.names = [name for name in parts if name != "total"]
        finite = torch.stack([torch.isfinite(parts[name].detach()).all() for name in self.names])
        self.flags = finite if self.flags is None else self.flags & finite

    def check(self, step: int) -> None:
        if self.flags is not None and not bool(self.flags.all()):
            name = self.names[int((~self.flags).nonzero()[0])]
            raise TrainingDiverged(
                f"loss part '{name}' became nan or inf between steps {self.since + 1} and {step}; "
                "lower optim.base_lr, raise teacher.warmup_temp_epochs or use precision=fp32"
            )
        self.flags, self.since = None, step


class MetricsLog:
    """metrics.jsonl on rank 0 (and TensorBoard when it is installed)."""

    def __init__(self, output_dir: Path, env: DistEnv):
        self.active = env.is_main
        self.path = output_dir / "metrics.jsonl"
        self.tensorboard = None
        if self.active:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(output_dir / "tensorboard")
            except ImportError:
                pass

    def forget_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint a run resumes from: those steps run again."""
        if self.active and self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True)
            self.path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)


def train(config: TrainConfig, build_model: Callable[[TrainConfig], DinoV2] = DinoV2) -> TrainResult:
    """Train `build_model(config)` (DINOv2 pretraining; distillation passes its own model) to the end."""
    env = init()
    run = config.run
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(config, out)
    if env.is_main:
        (out / "config.json").write_text(config.model_dump_json(indent=2))
    torch.manual_seed(run.seed)
    random.seed(run.seed)

    model = build_model(config).to(env.device)
    if run.compile:
        model.compile_parts()
    dtype = autocast_dtype(run.precision, env.device)
    student = wrap_student(model.student, model.ema_modules(), run.parallel, env, dtype, run.block_chunks)
    optimizer = build_optimizer(model.student, config)  # after sharding: FSDP2 replaces the parameters
    trained = [p for group in optimizer.param_groups for p in group["params"]]  # clipped; listed once, not per step
    schedules = Schedules.from_config(config, env.world_size)
    step, images_seen = checkpoint.load_latest(out / "checkpoints", model, optimizer)
    torch.manual_seed(run.seed + 1000 * env.rank + step)

    loader = loader_for(config, env.rank, step, pin_memory=env.device.type == "cuda")
    colour = colour_for(run.compile)
    last_step = min(config.optim.total_steps, run.max_steps or config.optim.total_steps)
    metrics = MetricsLog(out, env)
    metrics.forget_after(step)
    autocast = autocast_for(dtype, env.device)
    progress = tqdm(total=last_step, initial=step, desc="train", disable=not env.is_main, unit="step")
    window_start, window_images = time.perf_counter(), 0
    parts: dict[str, torch.Tensor] = {}
    watch = FiniteWatch()
    profiler = StepProfiler(run.profile_steps, out, env)
    model.train()
    while step < last_step:
        batch = next(loader).to(env.device).coloured(colour)
        values = schedules.apply(optimizer, step)
        with autocast:
            parts = compute_losses(model, student, batch, values["teacher_temp"])
        watch.add(parts)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        grad_norm = clip_grad_norm_(trained, config.optim.clip_grad) if config.optim.clip_grad else torch.tensor(0.0)
        optimizer.step()
        model.after_step(values["momentum"])
        step += 1
        images = batch.batch_size * env.world_size
        images_seen += images
        window_images += images
        progress.update(1)
        profiler.step_done(step)
        if step % run.log_every == 0 or step == last_step:
            watch.check(step)
            elapsed = time.perf_counter() - window_start
            logged = {f"loss/{k}": v.item() for k, v in parts.items()}
            logged.update(values, grad_norm=float(grad_norm), images_per_s=window_images / elapsed)
            metrics.write(step, logged)
            progress.set_postfix(loss=f"{logged['loss/total']:.3f}")
            window_start, window_images = time.perf_counter(), 0
        if step % run.checkpoint_every == 0 or step == last_step:
            watch.check(step)
            checkpoint.save(out / "checkpoints", step, images_seen, model, optimizer, env, run.keep_checkpoints)
    progress.close()
    export = checkpoint.export_backbone(model.exported_backbone(), out / "export", env)
    final_loss = parts["total"].item() if parts else float("nan")
    return TrainResult(step, images_seen, final_loss, export)
