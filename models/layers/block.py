"""A pre-norm transformer block with LayerScale and stochastic depth, keyed like DINOv2's `Block`."""

from __future__ import annotations

import torch
from torch import nn

from models.layers.attention import Attention
from models.layers.drop_path import SUBSET_MIN_RATE, DropPath, add_on_subsets
from models.layers.layer_scale import LayerScale
from models.layers.mlp import Mlp, SwiGLUFFNFused
from models.layers.tokens import cat_tokens, split_tokens

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

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """`x`: B×N×D, or a list of such batches whose N differ (DINOv2's global and local crops),
        which go through the block's norms, linear layers and MLP together (`models.layers.tokens`)
        while attention stays within each batch."""
        if isinstance(x, torch.Tensor):
            return self._forward([x])[0]
        return self._forward(x)

    def _forward(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        rate = self.drop_path1.drop_prob if self.training else 0.0
        if rate > SUBSET_MIN_RATE:
            batches = add_on_subsets(batches, self._attention, rate)
            return add_on_subsets(batches, self._feed_forward, rate)
        batches = [x + self.drop_path1(a) for x, a in zip(batches, self._attention(batches), strict=True)]
        return [x + self.drop_path2(f) for x, f in zip(batches, self._feed_forward(batches), strict=True)]

    def _attention(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        tokens, shapes = cat_tokens(batches)
        return split_tokens(self.ls1(self.attn.packed(self.norm1(tokens), shapes)), shapes)

    def _feed_forward(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        tokens, shapes = cat_tokens(batches)
        return split_tokens(self.ls2(self.mlp(self.norm2(tokens))), shapes)
