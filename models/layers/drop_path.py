"""Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample during training.

Two forms with the same expectation. `DropPath` zeroes the branch's output per sample, so the branch
still runs on the whole batch. `add_on_subsets` runs the branch on the kept samples only, as DINOv2's
`drop_add_residual_stochastic_depth` does: at DINOv2's ViT-L/g rate of 0.4 on every block, each
block computes 60% of the batch, which is most of what the rate should save.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SUBSET_MIN_RATE = 0.1
"""Below this rate the gather and scatter cost more than the skipped rows save (DINOv2's threshold)."""


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def add_on_subsets(
    batches: list[torch.Tensor], branch: Callable[[list[torch.Tensor]], list[torch.Tensor]], drop_prob: float
) -> list[torch.Tensor]:
    """For each batch, `x + branch(x)` for a random `1 - drop_prob` share of its samples, scaled up to
    keep the expectation; the other samples pass through unchanged and cost nothing. The branch
    runs once, over the kept samples of every batch (a block's global and local crops)."""
    rows = [torch.randperm(len(x), device=x.device)[: max(int(len(x) * (1.0 - drop_prob)), 1)] for x in batches]
    residuals = branch([x[kept] for x, kept in zip(batches, rows, strict=True)])
    return [
        torch.index_add(x, 0, kept, residual.to(x.dtype), alpha=len(x) / len(kept))
        for x, kept, residual in zip(batches, rows, residuals, strict=True)
    ]
