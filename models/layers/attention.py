"""Multi-head self-attention: PyTorch SDPA (flash / memory-efficient kernels), or xformers on CUDA when installed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        if memory_efficient_attention is not None and x.is_cuda:
            out = memory_efficient_attention(*qkv.unbind(2))  # B×N×H×d in and out
            return self.proj(out.reshape(b, n, d))
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each B×H×N×d
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
