"""The shipped large recipes say what DINOv2's own train/vitl14.yaml and train/vitg14.yaml say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foundation.config import load_config
from models.layers import SwiGLUFFNFused
from training.config import TrainConfig
from training.student_teacher import build_backbone

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "training"


@pytest.mark.parametrize("recipe", ["vitl14", "vitg14"])
def test_large_recipes_follow_dinov2(recipe, tmp_path):
    config = load_config(TrainConfig, RECIPES / f"{recipe}.yaml", [f"data.shards={tmp_path}"])
    assert (config.dino_head.prototypes, config.ibot_head.prototypes) == (131072, 131072)
    assert (config.dino_head.bottleneck_dim, config.ibot_head.bottleneck_dim) == (384, 256)
    assert config.loss.separate_ibot_head and config.loss.centering == "sinkhorn_knopp"
    assert (config.data.batch_size_per_gpu, config.teacher.momentum) == ({"vitl14": 32, "vitg14": 12}[recipe], 0.994)
    with torch.device("meta"):  # the shape without the memory (ViT-g is 1.1B parameters)
        backbone = build_backbone(config)
    assert all(isinstance(block.mlp, SwiGLUFFNFused) for block in backbone.blocks)
    assert {block.drop_path1.drop_prob for block in backbone.blocks} == {0.4}  # uniform, as DINOv2
