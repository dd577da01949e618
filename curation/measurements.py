"""Measured throughputs (benchmarks/results.jsonl): benchmarks append them, the cost model reads them.

One JSON object per line: which benchmark, which metric, its value and unit, the model or index
it was measured with, the device (a GPU's name, or "cpu" with its core count), the date, the git
commit and the exact command. A plan figure always names the line it came from.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from foundation.gpus import gpu_kind

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results.jsonl"


@dataclass(frozen=True)
class Measurement:
    benchmark: str
    metric: str
    value: float
    unit: str
    subject: str  # the model, index kind or stage measured
    device: str  # "cpu" or the GPU's name, e.g. "NVIDIA H100 80GB HBM3"
    cores: int
    date: str
    commit: str
    command: str

    def cite(self) -> str:
        return f"{self.benchmark} {self.date} @{self.commit[:8]} on {self.device} ({self.cores} cores)"


def current_device(gpu: bool) -> str:
    if gpu:
        import torch

        return torch.cuda.get_device_name(0)
    return "cpu"


def current_commit() -> str:
    """The checkout's commit; `LVD_COMMIT` names it where the tree came without .git or git (a copy
    sent to a GPU machine)."""
    if os.environ.get("LVD_COMMIT"):
        return os.environ["LVD_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent)
    except FileNotFoundError:  # no git on this machine
        return "unknown"
    return done.stdout.strip() or "unknown"


def record(benchmark: str, metric: str, value: float, unit: str, subject: str, gpu: bool = False) -> Measurement:
    """Append one measurement made now, on this machine, to benchmarks/results.jsonl."""
    measurement = Measurement(
        benchmark=benchmark,
        metric=metric,
        value=round(float(value), 3),
        unit=unit,
        subject=subject,
        device=current_device(gpu),
        cores=os.cpu_count() or 1,
        date=datetime.date.today().isoformat(),
        commit=current_commit(),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) + f"  # {platform.processor() or platform.machine()}",
    )
    with RESULTS.open("a") as f:
        f.write(json.dumps(asdict(measurement)) + "\n")
    return measurement


def load(path: Path = RESULTS) -> list[Measurement]:
    if not path.is_file():
        return []
    return [Measurement(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def latest(results: list[Measurement], metric: str, subject: str, device: str) -> Measurement | None:
    """The newest measurement of `metric` for `subject` on `device` (of the same date, the one
    recorded last: the file is append-only)."""
    found = [m for m in results if m.metric == metric and m.subject == subject and same_device(device, m.device)]
    return max(reversed(found), key=lambda m: m.date, default=None)


def same_device(wanted: str, recorded: str) -> bool:
    """Whether a measurement on `recorded` (a GPU's name, or "cpu") speaks for `wanted` (a fleet's
    GPU kind, or "cpu"): a GPU in the peak table must be the same kind, so a PCIe H100's rates are
    not taken for an SXM one's; another name need only appear in the recorded one."""
    kind = gpu_kind(wanted)
    return gpu_kind(recorded) == kind if kind else wanted.lower() in recorded.lower()


def peak_memory_growth(work: Callable[[], T]) -> tuple[T, int]:
    """`work()`'s result and how far it raised this process's peak resident memory above what the
    process held when it began, in bytes. The peak is reset first (Linux: `clear_refs`), so an
    earlier transient peak, such as the imports', cannot hide the growth."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_bytes("VmRSS")
    result = work()
    return result, _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024
