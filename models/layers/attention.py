"""Multi-head self-attention: PyTorch SDPA (flash / memory-efficient kernels), or xformers on CUDA when installed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.tokens import Shapes, cat_tokens, split_tokens

try:  # optional GPU extra; SDPA covers every other case
    from xformers.ops import memory_efficient_attention
except ImportError:
    memory_efficient_attention = None


class Attention(nn.Module):
    """`qkv` and `proj` linear layers, named as in the DINOv2 checkpoints."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return self.packed(x.flatten(0, 1), [(b, n)]).view(b, n, -1)

    def packed(self, tokens: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        """Self-attention within each batch of `tokens` ((ΣB·N)×D, laid out as `cat_tokens` does):
        one `qkv` and one `proj` product for all of them, attention batch by batch."""
        heads, width = self.num_heads, tokens.shape[-1] // self.num_heads
        qkv = split_tokens(self.qkv(tokens), shapes)
        out, _ = cat_tokens([self._attend(part.unflatten(-1, (3, heads, width))) for part in qkv])
        return self.proj(out)

    @staticmethod
    def _attend(qkv: torch.Tensor) -> torch.Tensor:
        """B×N×3×H×d queries, keys and values -> the B×N×(H·d) attention output."""
        b, n, _, h, d = qkv.shape
        if memory_efficient_attention is not None and qkv.is_cuda:
            return memory_efficient_attention(*qkv.unbind(2)).reshape(b, n, h * d)  # B×N×H×d in and out
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each B×H×N×d
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, h * d)
