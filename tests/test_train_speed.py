"""The trainer's speed levers compute what the plain step computes.

Subset stochastic depth (DINOv2's form), activation checkpointing, compiled blocks and losses, FSDP2 with the
student root kept gathered into backward and the EMA on local shards: each is checked against the
plain computation on CPU, so a GPU run only has to measure how fast they are.
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from torch.utils.flop_counter import FlopCounterMode

from foundation.config import validate_tree
from models.layers import Block
from models.layers.drop_path import add_on_subsets
from models.vision_transformer import DinoVisionTransformer, ViTArch
from tests.conftest import free_port
from tests.train_fixtures import tiny_train_tree, write_concept_shards
from training.config import TrainConfig
from training.data import CropBatch, loader_for
from training.distributed import DistEnv, fsdp_units, wrap_student
from training.losses import PrototypeLosses
from training.optim import build_optimizer, clip_grad_norm_
from training.student_teacher import DinoV2, build_backbone, compute_losses


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_concept_shards(tmp_path_factory.mktemp("curated"))


def _config(shards, out, **sections) -> TrainConfig:
    return validate_tree(TrainConfig, tiny_train_tree(shards, out, **sections), "test")


def _gradients(model: DinoV2, batch) -> dict[str, torch.Tensor]:
    parts = compute_losses(model, model.student, batch, teacher_temp=0.05)
    parts["total"].backward()
    return {name: p.grad.clone() for name, p in model.student.named_parameters() if p.grad is not None}


def test_subset_depth_adds_the_scaled_branch_to_the_kept_samples_of_each_batch_only():
    batches = [torch.randn(10, 3, 4), torch.randn(20, 2, 4)]  # a global and a local crop batch
    seen = []

    def branch(kept: list[torch.Tensor]) -> list[torch.Tensor]:
        seen.append([len(x) for x in kept])  # one call for both batches
        return [2 * x for x in kept]

    outs = add_on_subsets(batches, branch, drop_prob=0.4)
    assert seen == [[6, 12]]  # int(n · 0.6) samples of each run the branch
    for x, out in zip(batches, outs, strict=True):
        changed = (out != x).flatten(1).any(dim=1)
        assert int(changed.sum()) == int(len(x) * 0.6)
        torch.testing.assert_close(out[changed], x[changed] * (1 + 2 * len(x) / int(len(x) * 0.6)))
        assert torch.equal(out[~changed], x[~changed])


def test_a_block_dropping_at_0_4_computes_0_6_of_its_flops():
    block, x = Block(64, 4, drop_path=0.4), torch.randn(20, 17, 64)

    def flops(training: bool) -> int:
        block.train(training)
        with FlopCounterMode(display=False) as counter:
            block(x).sum().backward()
        return counter.get_total_flops()

    assert flops(True) / flops(False) == pytest.approx(0.6, abs=0.02)


def test_global_and_local_crops_in_one_pass_give_what_two_passes_give():
    """DINOv2 runs the student's two crop sizes through each block together; attention must still
    stay within each image, and every output and gradient must be the separate passes'."""
    torch.manual_seed(0)
    vit = DinoVisionTransformer(ViTArch(32, 3, 2), patch_size=8, img_size=32, num_register_tokens=4)
    global_crops, local_crops = torch.randn(2, 3, 32, 32), torch.randn(5, 3, 16, 16)
    masks = torch.rand(2, 16) < 0.3

    def outputs(together: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        vit.zero_grad()
        if together:
            features = vit.forward_features_list([global_crops, local_crops], [masks, None])
        else:
            features = [vit.forward_features(global_crops, masks), vit.forward_features(local_crops)]
        out = [f[key] for f in features for key in sorted(f)]
        sum(
            (o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i))).sum() for i, o in enumerate(out)
        ).backward()
        return out, {name: p.grad.clone() for name, p in vit.named_parameters() if p.grad is not None}

    (apart, apart_grads), (together, together_grads) = outputs(False), outputs(True)
    for a, b in zip(apart, together, strict=True):
        torch.testing.assert_close(b, a)
    assert together_grads.keys() == apart_grads.keys()
    for name in apart_grads:
        error = float((together_grads[name] - apart_grads[name]).abs().max() / apart_grads[name].abs().max())
        assert error < 1e-5, (name, error)  # one product over both batches sums in another order


def test_every_block_drops_at_the_recipe_rate_unless_told_to_ramp(shards, tmp_path):
    model = {"drop_path_rate": 0.4, "depth": 3}
    uniform = build_backbone(_config(shards, tmp_path, model=model))
    ramp = build_backbone(_config(shards, tmp_path, model={**model, "drop_path_uniform": False}))
    assert [b.drop_path1.drop_prob for b in uniform.blocks] == [0.4, 0.4, 0.4]
    assert [b.drop_path1.drop_prob for b in ramp.blocks] == pytest.approx([0.0, 0.2, 0.4])


def _twins(shards, tmp_path, drop_path_rate: float) -> tuple[CropBatch, DinoV2, DinoV2]:
    """A batch, a model, and a copy of the model to turn one lever on in."""
    config = _config(shards, tmp_path, model={"drop_path_rate": drop_path_rate})
    batch = next(loader_for(config, rank=0, start_step=0, workers=0))
    torch.manual_seed(0)
    model = DinoV2(config)
    return batch, model, copy.deepcopy(model)


def test_activation_checkpointing_gives_the_same_gradients(shards, tmp_path):
    batch, plain, recomputing = _twins(shards, tmp_path, drop_path_rate=0.4)
    recomputing.student.backbone.activation_checkpointing = True
    torch.manual_seed(1)
    expected = _gradients(plain, batch)
    torch.manual_seed(1)
    got = _gradients(recomputing, batch)  # the same samples dropped: checkpoint replays the RNG
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


@pytest.mark.slow
def test_compiled_losses_match_eager_and_compile_once_for_every_row_count():
    eager, compiled = PrototypeLosses(), PrototypeLosses.compiled()

    def both(losses: PrototypeLosses, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        student = (torch.randn(rows, 512) * 3).bfloat16().requires_grad_()  # the head's bf16 logits
        targets = torch.softmax(torch.randn(rows, 512) * 5, dim=-1)
        weights = torch.rand(rows)
        loss = losses.ibot(student, targets, weights, 4, 0.1) + losses.dino(
            student.unflatten(0, (2, -1)), targets.unflatten(0, (2, -1)), 0.1
        )
        loss.backward()
        return loss.detach(), student.grad.float(), student

    both(compiled, 40, 0)  # compiles here
    with torch._dynamo.config.patch(error_on_recompile=True):  # masked patches vary each step: no recompiles
        for rows, seed in ((58, 1), (226, 2)):
            expected, got = both(eager, rows, seed), both(compiled, rows, seed)
            torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=0)
            torch.testing.assert_close(got[1], expected[1], rtol=1e-2, atol=1e-6)  # bf16 gradients, rounded alike


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_gradients(shards, tmp_path):
    batch, eager, compiled = _twins(shards, tmp_path, drop_path_rate=0.0)
    compiled.compile_parts()
    expected, got = _gradients(eager, batch), _gradients(compiled, batch)
    for name in expected:  # fused kernels sum in another order; the sharp softmax targets amplify it to ~0.3%
        error = float((got[name] - expected[name]).abs().max() / expected[name].abs().max())
        assert error < 0.01, (name, error)
    assert set(compiled.student.state_dict()) == set(eager.student.state_dict())  # DINOv2's keys


CLIP = 1.0  # far below the test model's gradient norm, so clipping scales every gradient


def _fsdp_rank(rank: int, port: int, config: TrainConfig, results: dict) -> None:
    """One of two ranks: both see the same batch, so FSDP2's averaged gradients are the batch's own."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    random.seed(0)  # the crops' randomness, so both ranks draw the same batch
    torch.manual_seed(0)
    batch = next(loader_for(config, rank=0, start_step=0, workers=0))
    torch.manual_seed(0)
    model = DinoV2(config)
    reference = copy.deepcopy(model)
    env = DistEnv(rank, 2, 0, torch.device("cpu"))
    student = wrap_student(model.student, model.ema_modules(), "fsdp", env, torch.float32, config.run.block_chunks)
    optimizer = build_optimizer(model.student, config)
    parts = compute_losses(model, student, batch, teacher_temp=0.05)
    between = {name: _is_sharded(module) for name, module in (("student", model.student), ("teacher", model.teacher))}
    parts["total"].backward()
    norm = float(clip_grad_norm_(list(model.student.parameters()), CLIP))  # on the local shards
    sharded = {name: p.grad.full_tensor() for name, p in model.student.named_parameters() if p.grad is not None}
    for group in optimizer.param_groups:
        group.update(lr=1e-3, weight_decay=0.1)
    for _ in range(2):  # twice: the second EMA update runs on the views the first one kept, AdamW on local shards
        optimizer.step()
        model.after_step(0.5)
    teacher = {name: p.full_tensor() for name, p in model.teacher.named_parameters()}
    # The unsharded model, the same step, on both ranks: its centring all-reduces too.
    _gradients(reference, batch)
    reference_norm = float(torch.nn.utils.clip_grad_norm_(list(reference.student.parameters()), CLIP))
    expected = {name: p.grad for name, p in reference.student.named_parameters() if p.grad is not None}
    reference_optimizer = build_optimizer(reference.student, config)
    for group in reference_optimizer.param_groups:
        group.update(lr=1e-3, weight_decay=0.1)
    # The EMA by its definition, from the students after each step, for both models to match.
    defined = {name: p.detach().clone() for name, p in reference.teacher.named_parameters()}
    students = dict(reference.student.named_parameters())
    for _ in range(2):
        reference_optimizer.step()
        reference.after_step(0.5)
        for name, value in defined.items():
            value.lerp_(students[name].detach(), 0.5)
    unsharded = dict(reference.teacher.named_parameters())
    if rank == 0:
        results.update(
            between_forward_and_backward=between,
            after_the_step=_is_sharded(model.student),
            missing=sorted(expected.keys() - sharded.keys()),
            norms=(norm, reference_norm),
            gradient_error={n: float((sharded[n] - expected[n]).abs().max()) for n in expected},
            teacher_error={n: float((t - defined[n]).abs().max()) for n, t in teacher.items()},
            unsharded_teacher_error={n: float((t - defined[n]).abs().max()) for n, t in unsharded.items()},
        )
    dist.destroy_process_group()


def test_blocks_are_sharded_one_by_one_or_in_chunks_of_consecutive_blocks():
    blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(10))
    assert fsdp_units(blocks, 0) == list(blocks)
    assert fsdp_units(blocks, 2) == [list(blocks[:5]), list(blocks[5:])]
    assert [len(unit) for unit in fsdp_units(blocks, 4)] == [3, 3, 3, 1]  # at most 4 units


def _is_sharded(module: torch.nn.Module) -> bool | None:
    """True when every parameter is a DTensor shard, False when none is (gathered), else None."""
    kinds = {isinstance(p, DTensor) for p in module.parameters()}
    return kinds.pop() if len(kinds) == 1 else None


def test_two_fsdp2_ranks_give_the_unsharded_gradients_and_teacher(shards, tmp_path):
    """Every parameter's gradient, the root's (heads, patch embedding) included, equals the
    unsharded model's, clipped on the local shards as torch clips the whole, and the EMA, computed on local shards through the views its first update
    kept, follows the student step after step, sharded and unsharded.

    The student stays gathered from forward into backward (DINOv2's SHARD_GRAD_OP: one gather
    a step, not one per use), the teacher reshards after its forward, and after the step the
    student is sharded again, so memory per rank still falls with the number of ranks. The blocks
    are sharded two to a unit, as the recipes' `block_chunks` does."""
    config = _config(shards, tmp_path, model={"drop_path_rate": 0.0, "depth": 4}, run={"block_chunks": 2})
    results = mp.Manager().dict()
    mp.spawn(_fsdp_rank, args=(free_port(), config, results), nprocs=2)
    assert results["between_forward_and_backward"] == {"student": False, "teacher": True}
    assert results["after_the_step"] is True
    assert results["missing"] == []
    sharded_norm, unsharded_norm = results["norms"]
    assert sharded_norm == pytest.approx(unsharded_norm, rel=1e-5) and unsharded_norm > 10 * CLIP
    worst = max(results["gradient_error"].items(), key=lambda item: item[1])
    assert worst[1] < 1e-5, worst
    assert any(name.startswith("dino_head.last_layer") for name in results["gradient_error"])
    for errors in ("teacher_error", "unsharded_teacher_error"):
        worst = max(results[errors].items(), key=lambda item: item[1])
        assert worst[1] < 1e-6, (errors, worst)
