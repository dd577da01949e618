"""Where time goes under torch.profiler: a window of the real training loop, and the helpers the
benchmarks' own profiles share.

`benchmarks/train.py --profile` profiles the bare step; this profiles `train()` itself, with the
loader, the hooks of FSDP2, clipping, logging and everything else a bare step leaves out, so a
loop slower than its bare step can say why. `run.profile_steps=[A,B]` profiles the steps after
step A up to step B on rank 0, then writes `profile.txt` (the operators by device time, or by
host time on a CPU) and `profile_trace.json` (a Chrome trace, for Perfetto or chrome://tracing)
into the run's folder and prints one line. On a GPU that line gives the share of the window's
wall time in which the GPU ran kernels: far below 100%, the host or the loader sets the pace.
The profiler itself slows the host, so on a loop the host nearly paces that share is a floor.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from training.distributed import DistEnv


def profiler_for(device: torch.device) -> profile:
    """torch.profiler over the host and, on a GPU, its kernels."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    return profile(activities=activities)


def kernel_seconds(prof: profile) -> float:
    """Seconds the GPU spent in kernels while `prof` ran (0 on a CPU), as its table's total counts them."""
    kernels = (e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    return sum(e.self_device_time_total for e in kernels) / 1e6  # microseconds


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing to wait for on a CPU), so a clock reads work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def top_operators(prof: profile, device: torch.device, rows: int = 25) -> str:
    """`prof`'s operators as a table, by their own device time on a GPU and host time on a CPU."""
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=70)


class StepProfiler:
    """Call `step_done(step)` after every step; it starts and stops the profiler at the window's ends."""

    def __init__(self, window: tuple[int, int] | None, out: Path, env: DistEnv):
        self.window = window if env.is_main else None
        self.out, self.device = out, env.device
        self.profiler: profile | None = None
        self.started = 0.0

    def step_done(self, step: int) -> None:
        if self.window is None:
            return
        first, last = self.window
        if step == first:
            synchronize(self.device)
            self.profiler = profiler_for(self.device)
            self.profiler.start()
            self.started = time.perf_counter()
        elif step == last and self.profiler is not None:
            synchronize(self.device)
            wall = time.perf_counter() - self.started
            self.profiler.stop()
            print(self._report(self.profiler, steps=last - first, wall=wall), flush=True)
            self.profiler = None

    def _report(self, prof: profile, steps: int, wall: float) -> str:
        """Write the table and the trace; the line to print."""
        (self.out / "profile.txt").write_text(top_operators(prof, self.device, rows=40))
        prof.export_chrome_trace(str(self.out / "profile_trace.json"))
        line = f"profile: {steps} steps, {wall / steps * 1000:.1f} ms each"
        if self.device.type == "cuda":
            line += f", GPU busy {kernel_seconds(prof) / wall:.0%} of the time"
        return line + f" (table: {self.out / 'profile.txt'})"
