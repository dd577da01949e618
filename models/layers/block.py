"""A pre-norm transformer block with LayerScale and stochastic depth, keyed like DINOv2's `Block`."""

from __future__ import annotations

import torch
from torch import nn

from models.layers.attention import Attention
from models.layers.drop_path import DropPath
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
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
