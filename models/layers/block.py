"""A pre-norm transformer block with LayerScale and stochastic depth, keyed like DINOv2's `Block`."""

from __future__ import annotations

import torch
from torch import nn

from models.layers.attention import Attention
from models.layers.drop_path import SUBSET_MIN_RATE, DropPath, add_on_subset
from models.layers.layer_scale import LayerScale
from models.layers.mlp import Mlp, SwiGLUFFNFused

FFN_LAYERS = {"mlp": Mlp, "swiglufused": SwiGLUFFNFused}


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        init_values: float = 1e-5,
        drop_path: float = 0.0,
        ffn_layer: str = "mlp",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FFN_LAYERS[ffn_layer](dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate = self.drop_path1.drop_prob if self.training else 0.0
        if rate > SUBSET_MIN_RATE:
            x = add_on_subset(x, self._attention, rate)
            return add_on_subset(x, self._feed_forward, rate)
        x = x + self.drop_path1(self._attention(x))
        return x + self.drop_path2(self._feed_forward(x))

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))
