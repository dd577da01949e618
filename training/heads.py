"""The DINO projection head: MLP → bottleneck → L2 norm → weight-normalised prototypes.

Parameter names follow DINOv2's `DINOHead` (`mlp.0/2/4`, `last_layer.weight_g`, `last_layer.weight_v`)
so heads from official training checkpoints load. Weight normalisation is written out instead of
using `torch.nn.utils.weight_norm`, which is deprecated and whose forward hook does not survive
FSDP2 sharding.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """`weight = g · v / ‖v‖` per output row, no bias; `g` starts at 1 and is not trained (as in DINO)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=False)
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * F.normalize(self.weight_v, dim=1)
        return F.linear(x, weight.to(x.dtype))


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return self.last_layer(F.normalize(x, dim=-1, eps=eps))
