"""The GPU peak table that benchmarks' MFU and `--plan`'s estimates share."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from curation.cost_model import MODELS
from foundation.gpus import GPU_PEAKS, gpu_kind, gpu_peak
from models.embedders import create_embedder


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),  # the SXM part, as CUDA names it
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("Tesla V100-SXM2-32GB", "V100"),
        ("H100", "H100"),  # a fleet's kind, as `--gpus 8xH100` gives it
        ("h100-pcie", "H100 PCIe"),
        ("b200", "B200"),
    ],
)
def test_a_device_or_fleet_name_finds_its_gpus_peaks(name, kind):
    assert gpu_kind(name) == kind
    assert gpu_peak(name) is GPU_PEAKS[kind]


@pytest.mark.parametrize("name", ["NVIDIA GB200", "NVIDIA H1000", "NVIDIA GeForce RTX 4090", "cpu", ""])
def test_a_gpu_not_in_the_table_has_no_peak_rather_than_a_neighbours(name):
    assert gpu_kind(name) is None and gpu_peak(name) is None


def test_the_plans_model_flops_are_what_the_embed_benchmark_counts():
    """`--plan`'s GFLOPs per image and the embed benchmark's MFU must count the same way."""
    embedder = create_embedder("dinov2:vits14", weights="random")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        embedder.model(torch.zeros(1, 3, 224, 224))
    assert counter.get_total_flops() / 1e9 == pytest.approx(MODELS["dinov2:vits14"][0], rel=0.01)
