"""DINOv2's three losses: DINO (CLS prototypes), iBOT (masked patch prototypes) and KoLeo.

Teacher targets come either from softmax with a running centre (DINO) or from Sinkhorn-Knopp
(DINOv2's choice for large models), which balances prototype usage across the global batch. Both
reduce across ranks when a process group is up, so targets are the same under any world size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _global_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of `tensor` summed over ranks (ranks may hold different numbers, e.g. of masked patches).

    Made on the device by a fill, not copied from the host, which would make the host wait for it.
    """
    return _all_reduce(torch.full((), float(tensor.shape[0]), device=tensor.device))


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Soft assignments (B×K) whose rows each sum to 1 and whose prototype marginals are uniform.

    `logits` is this rank's share of the rows; the marginals hold over all ranks together.

    Each normalisation only rescales rows or columns, so every iterate is diag(u)·E·diag(v) with
    E = exp(logits / τ) fixed: the iterations update the vectors u (B) and v (K), each from one
    matrix-vector product over E, and the matrix is scaled once at the end. DINOv2 rescales the
    whole matrix at every step, and also divides it by its total, by K and by the global row count
    and multiplies by that count at the end, scalars that the next normalisation cancels. For
    ViT-L's iBOT head (about 2,500 masked patches by 131,072 prototypes, 1.3 GB in fp32) a call
    here reads or writes that size 16 times, where DINOv2's form does 45.
    """
    peak = logits.max().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    e = logits.to(torch.float32, copy=True)  # B × K, ours to change in place
    # E = exp((logits - peak) / τ) in one pass and an exp: the shift cancels in the normalisation
    # and keeps exp from overflowing.
    torch.add(-peak / temperature, e, alpha=1 / temperature, out=e).exp_()
    u = torch.ones(e.shape[0], dtype=e.dtype, device=e.device)
    for _ in range(iterations):
        v = _all_reduce(u @ e).reciprocal_()  # each prototype's mass, over every rank's rows, made 1
        u = (e @ v).reciprocal_()  # then each row's mass made 1
    return e.mul_(v).mul_(u.unsqueeze(1))


class CenteredTargets(nn.Module):
    """Teacher targets from prototype logits: centred softmax (with an EMA centre) or Sinkhorn-Knopp."""

    def __init__(self, out_dim: int, centering: str = "centering", center_momentum: float = 0.9):
        super().__init__()
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', not {centering!r}")
        self.centering, self.center_momentum = centering, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, temperature)
        targets = F.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)
        self._update_center(teacher_logits)
        return targets

    @torch.no_grad()
    def _update_center(self, teacher_logits: torch.Tensor) -> None:
        total = _all_reduce(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_center = total / _global_rows(teacher_logits).clamp(min=1)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def cross_entropy(targets: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row −Σ p_teacher · log softmax(student / τ_s)."""
    return -(targets * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


def dino_loss(student_logits: torch.Tensor, teacher_targets: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """Sum over every (student view, teacher view) pair of the batch-mean cross-entropy.

    `student_logits` is V×B×K (V views of the same B images), `teacher_targets` T×B×K. The
    cross-entropy is linear in its targets, so the teacher views are summed first: one log-softmax
    of each student row instead of one per pair (ViT-L's 8 local crops against 2 global ones take
    8 passes over 131,072 prototypes, not 16).
    """
    return cross_entropy(teacher_targets.sum(dim=0), student_logits, student_temp).mean(dim=-1).sum()


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_targets: torch.Tensor,
    weights: torch.Tensor,
    num_crops: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Masked-patch cross-entropy, each crop weighted equally whatever its number of masked patches.

    `student_logits` and `teacher_targets` hold the masked patches only (M×K, in `masks[masks]`
    order); `weights` is each patch's 1 / (masked patches of its crop), from
    `masking.masked_rows`. The sum is divided by the number of global crops, as DINOv2 does, so
    crops without masks dilute the loss.
    """
    per_patch = cross_entropy(teacher_targets, student_logits, student_temp)
    return (per_patch * weights).sum() / num_crops


class PrototypeLosses(NamedTuple):
    """The two losses over prototype logits, as a step calls them: eager, or compiled (`compiled`)."""

    dino: Callable[..., torch.Tensor] = dino_loss
    ibot: Callable[..., torch.Tensor] = ibot_loss

    @classmethod
    def compiled(cls) -> PrototypeLosses:
        """Each loss as one or two fused kernels a pass instead of a dozen elementwise ones.

        Their inputs are rows × prototypes matrices (about 2,500 × 131,072 for ViT-L's iBOT head,
        1.3 GB in fp32), so every eager op is a full read and write of one: the cast, the
        temperature, the log-softmax, the product with the targets and the sum, and as many in
        backward. The row counts change every step (masked patches), so shapes are dynamic.
        """
        return cls(torch.compile(dino_loss, dynamic=True), torch.compile(ibot_loss, dynamic=True))


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate: −mean log distance to each feature's nearest neighbour.

    Spreads features over the sphere. A batch of one has no neighbour, so its loss is 0.
    """
    if features.shape[0] < 2:
        return features.sum() * 0.0
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()
