"""What each GPU kind can do at most: the dense peaks a benchmark's MFU is measured against, and
that `--plan` estimates from for a GPU kind with no measurement of its own yet.

One table for both, so a benchmark's MFU and the plan's assumed utilisation are fractions of the
same number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    """Dense peaks in TFLOP/s from the vendors' data sheets (no sparsity): tensor-core bf16 (fp16 on
    a V100, which has no bf16; the two are equal on the others), and fp32 without tensor cores."""

    bf16: float
    fp32: float


GPU_PEAKS = {
    "H100 PCIe": GpuPeak(756.5, 51.2),
    "H100 NVL": GpuPeak(835.5, 60.0),
    "H100": GpuPeak(989.4, 66.9),
    "GH200": GpuPeak(989.4, 66.9),
    "H200": GpuPeak(989.4, 66.9),
    "B200": GpuPeak(2250.0, 75.0),
    "A100": GpuPeak(312.0, 19.5),
    "L40S": GpuPeak(362.1, 91.6),
    "V100": GpuPeak(125.0, 15.7),
}
"""Looked up in this order, so the slower PCIe and NVL H100s are found before the SXM one."""


def gpu_peak(name: str) -> GpuPeak | None:
    """The peaks of the GPU that `name` names (see `gpu_kind`); None for a kind not in the table."""
    kind = gpu_kind(name)
    return GPU_PEAKS[kind] if kind else None


def gpu_kind(name: str) -> str | None:
    """The table's kind for `name`, either a fleet's kind (`H100`, `h100-pcie`) or the device name
    CUDA reports (`NVIDIA H100 80GB HBM3`); None for a kind not in the table.

    Names match by whole words, so an `NVIDIA GB200` is not taken for a B200.
    """
    words = _words(name)
    for key in GPU_PEAKS:
        wanted = _words(key)
        if any(words[i : i + len(wanted)] == wanted for i in range(len(words))):
            return key
    return None


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", name.lower())
