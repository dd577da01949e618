"""Schedules hit their endpoints; masks have the configured count and ratio range; parameter groups; clipping."""

from __future__ import annotations

import random

import pytest
import torch

from training.config import TrainConfig
from training.masking import BlockMaskGenerator, batch_masks, masked_rows, select_masked
from training.optim import Schedules, build_optimizer, clip_grad_norm_, layer_id
from training.schedules import CosineSchedule
from training.student_teacher import Student


def test_cosine_schedule_endpoints():
    s = CosineSchedule(base=1.0, final=0.1, total=100, warmup=10, start_warmup=0.0)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.55)  # halfway through the cosine
    assert s(100) == pytest.approx(0.1)
    assert s(1000) == pytest.approx(0.1)


def test_frozen_schedule_is_zero_then_warms_up():
    s = CosineSchedule(base=1.0, final=0.0, total=100, warmup=10, freeze=20)
    assert [s(i) for i in (0, 19)] == [0.0, 0.0]
    assert s(25) == pytest.approx(0.5)
    assert s(30) == pytest.approx(1.0)


@pytest.mark.parametrize("count", [0, 1, 5, 20, 50, 100, 196])
def test_block_mask_has_exactly_the_requested_count(count):
    mask = BlockMaskGenerator((14, 14))(count, random.Random(count))
    assert mask.shape == (14, 14) and int(mask.sum()) == count


def test_batch_masks_ratio_and_probability():
    rng = random.Random(0)
    generator = BlockMaskGenerator((16, 16))
    masks = batch_masks(generator, num_crops=64, probability=0.5, ratio=(0.1, 0.5), rng=rng)
    ratios = masks.float().mean(dim=1)
    masked = ratios[ratios > 0]
    assert masks.shape == (64, 256)
    assert len(masked) == 32
    assert float(masked.min()) >= 0.1 - 1 / 256 and float(masked.max()) <= 0.5
    assert float(masked.max()) > 0.4 and float(masked.min()) < 0.2  # spread over the whole range


def test_masked_rows_select_what_the_boolean_masks_select():
    masks = batch_masks(
        BlockMaskGenerator((6, 6)), num_crops=8, probability=0.5, ratio=(0.1, 0.5), rng=random.Random(1)
    )
    tokens = torch.randn(8, 36, 5)
    rows, weights = masked_rows(masks)
    assert torch.equal(select_masked(tokens, rows), tokens[masks])
    crop_of = rows // 36
    assert torch.equal(weights, 1.0 / masks.sum(dim=1)[crop_of])  # each masked crop's weights sum to 1


def _config(tmp_path, **optim) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "run": {"output_dir": str(tmp_path)},
            "data": {"shards": str(tmp_path), "batch_size_per_gpu": 256},
            "model": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
            "dino_head": {"prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16},
            "crops": {"global_size": 32, "local_size": 16},
            "optim": {"epochs": 10, "epoch_length": 10, "warmup_epochs": 1, **optim},
        }
    )


def test_lr_scales_with_the_square_root_of_the_global_batch(tmp_path):
    config = _config(tmp_path)
    schedules = Schedules.from_config(config, world_size=16)  # 4096 images per step
    assert schedules.lr(10) == pytest.approx(config.optim.base_lr * 2)
    assert schedules.last_layer_lr(5) == 0.0  # frozen for the first epoch
    assert schedules.teacher_temp(0) == pytest.approx(config.teacher.warmup_temp)
    assert schedules.momentum(100) == pytest.approx(1.0)
    assert schedules.weight_decay(100) == pytest.approx(config.optim.weight_decay_end)


def test_param_groups_decay_by_layer_and_spare_norms_from_weight_decay(tmp_path):
    config = _config(tmp_path, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    student = Student(config)
    optimizer = build_optimizer(student, config)
    Schedules.from_config(config, 1).apply(optimizer, step=20)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(student.named_parameters())
    assert layer_id("backbone.blocks.2.attn.qkv.weight", 3) == 3
    assert by_param[id(named["backbone.blocks.0.attn.qkv.weight"])]["lr_multiplier"] == pytest.approx(0.5**3)
    assert by_param[id(named["backbone.patch_embed.proj.weight"])]["lr_multiplier"] == pytest.approx(0.5**4 * 0.2)
    assert by_param[id(named["dino_head.mlp.0.weight"])]["lr_multiplier"] == 1.0
    assert by_param[id(named["backbone.blocks.0.norm1.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["backbone.blocks.0.ls1.gamma"])]["weight_decay"] == 0.0
    assert by_param[id(named["dino_head.mlp.0.weight"])]["weight_decay"] > 0
    assert by_param[id(named["dino_head.last_layer.weight_v"])]["is_last_layer"]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(p.requires_grad for p in student.parameters())
    assert torch.is_tensor(named["backbone.mask_token"])


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # binding, and not
def test_clipping_scales_gradients_as_torch_does(max_norm):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in ((3, 4), (7,), (2, 2, 2))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    ours.append(torch.nn.Parameter(torch.ones(2)))  # no gradient: left out, as torch leaves it
    norm = clip_grad_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(norm, expected)
    for a, b in zip(ours[:-1], theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert ours[-1].grad is None


def test_every_tensor_of_the_student_output_is_a_pytree_leaf(tmp_path):
    """FSDP2 hooks the backward of the tensors pytree finds in a forward's output; a tensor hidden
    from it leaves the root's parameters freed for backward (the first CUDA step crashed)."""
    config = _config(tmp_path)
    student = Student(config)
    size = config.crops.global_size
    globals_ = torch.randn(4, 3, size, size)
    locals_ = torch.randn(4 * config.crops.local_number, 3, config.crops.local_size, config.crops.local_size)
    masks = torch.zeros(4, (size // config.model.patch_size) ** 2, dtype=torch.bool)
    masks[:, :3] = True
    out = student(globals_, locals_, masks, masked_rows(masks)[0])
    leaves = torch.utils._pytree.tree_leaves(out)
    assert len(leaves) == 4 and all(torch.is_tensor(leaf) for leaf in leaves)
    assert {id(leaf) for leaf in leaves} == {id(t) for t in out}
