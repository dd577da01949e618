"""Each DINOv2 loss against its formula on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from training.heads import DINOHead
from training.losses import CenteredTargets, dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp
from training.masking import masked_rows


def _cross_entropy(target: torch.Tensor, logits: torch.Tensor, tau: float) -> float:
    logp = logits / tau - torch.logsumexp(logits / tau, dim=-1, keepdim=True)
    return float(-(target * logp).sum())


def test_dino_loss_is_the_sum_of_pairwise_mean_cross_entropies():
    torch.manual_seed(0)
    students = torch.randn(3, 4, 6)  # 3 views of 4 images, 6 prototypes
    teachers = torch.softmax(torch.randn(2, 4, 6), dim=-1)  # 2 teacher views of the same images
    tau = 0.5
    expected = sum(_cross_entropy(t, s, tau) / 4 for s in students for t in teachers)  # each pair's batch mean
    assert float(dino_loss(students, teachers, tau)) == pytest.approx(expected, rel=1e-6)


def test_dino_loss_is_minimal_when_student_matches_a_one_hot_teacher():
    target = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    confident = torch.tensor([[[-10.0, 10.0, -10.0, -10.0]]])
    unsure = torch.zeros(1, 1, 4)
    assert float(dino_loss(confident, target)) < 1e-6
    assert float(dino_loss(unsure, target)) == pytest.approx(math.log(4), rel=1e-6)


def test_ibot_loss_weighs_every_image_equally_and_divides_by_batch():
    masks = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    count = int(masks.sum())
    targets = torch.full((count, 2), 0.5)
    logits = torch.zeros(count, 2)  # cross-entropy log 2 per patch
    rows, weights = masked_rows(masks)
    assert rows.tolist() == [0, 3, 4, 5]  # flat indices, in masks[masks] order
    # image 0: 1 patch weight 1; image 1: 3 patches weight 1/3 each; image 2 none; / 3 images
    assert float(ibot_loss(logits, targets, weights, len(masks))) == pytest.approx(2 * math.log(2) / 3, rel=1e-6)


def test_koleo_is_minus_mean_log_nearest_neighbour_distance():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # nearest distances: sqrt(2) for all three points
    assert float(koleo_loss(x)) == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)


def test_koleo_of_a_single_feature_is_zero_and_differentiable():
    x = torch.randn(1, 8, requires_grad=True)
    loss = koleo_loss(x)
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def test_sinkhorn_rows_sum_to_one_and_prototypes_are_used_uniformly():
    torch.manual_seed(0)
    logits = torch.randn(64, 16)
    given = logits.clone()
    q = sinkhorn_knopp(logits, temperature=0.1, iterations=50)
    assert torch.equal(logits, given)  # it works in place on a copy, never on the caller's logits
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-4)
    assert torch.allclose(q.sum(dim=0), torch.full((16,), 64 / 16), rtol=1e-2)


def test_sinkhorn_is_exact_where_float32_exp_would_overflow():
    torch.manual_seed(0)
    logits = torch.rand(32, 8) * 2 - 1  # the head's logits lie in [-1, 1]
    q = sinkhorn_knopp(logits, temperature=0.0115)  # exp(1 / 0.0115) is inf in float32
    reference = torch.exp(logits.double() / 0.0115).t()  # the unshifted algorithm, in float64
    reference /= reference.sum()
    for _ in range(3):
        reference /= reference.sum(dim=1, keepdim=True) * 8
        reference /= reference.sum(dim=0, keepdim=True) * 32
    assert torch.allclose(q.double(), (reference * 32).t(), atol=1e-5)


def test_centering_subtracts_the_running_mean_and_updates_it_by_ema():
    targets = CenteredTargets(3, "centering", center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    first = targets(logits, temperature=1.0)
    assert torch.allclose(first, torch.softmax(logits, dim=-1))  # centre starts at zero
    assert torch.allclose(targets.center, torch.tensor([[0.2, 0.2, 0.2]]))  # 0.1 × batch mean (2, 2, 2)


def test_unknown_centering_is_refused():
    with pytest.raises(ValueError, match="sinkhorn_knopp"):
        CenteredTargets(4, "softmax")


def test_dino_head_is_bounded_by_its_weight_norm_and_keyed_like_dinov2():
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8)
    out = head(torch.randn(5, 16) * 100)
    assert out.shape == (5, 32)
    assert out.abs().max() <= 1.0 + 1e-5  # unit-norm bottleneck times unit-norm prototypes
    keys = set(head.state_dict())
    assert {"mlp.0.weight", "mlp.2.weight", "mlp.4.weight", "last_layer.weight_g", "last_layer.weight_v"} <= keys
    assert not head.last_layer.weight_g.requires_grad
