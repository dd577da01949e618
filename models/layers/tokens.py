"""Batches of token sequences of different lengths as one token matrix.

DINOv2 runs a student's global crops (257 tokens each for ViT-L/14) and local crops (50) through
each block together: norms, linear layers and MLPs treat every token alike, so they take the
tokens of both batches one after the other, and only attention looks at each batch alone. A
block's weights are then read, and its kernels launched, once per step instead of once per crop
size.
"""

from __future__ import annotations

import torch

Shapes = list[tuple[int, int]]
"""Each batch's (samples, tokens per sample), in the order their tokens are laid out."""


def cat_tokens(batches: list[torch.Tensor]) -> tuple[torch.Tensor, Shapes]:
    """The batches' tokens (each B×N×D) as one (ΣB·N)×D matrix, and their shapes; a view for one."""
    shapes = [(x.shape[0], x.shape[1]) for x in batches]
    if len(batches) == 1:
        return batches[0].flatten(0, 1), shapes
    return torch.cat([x.flatten(0, 1) for x in batches]), shapes


def split_tokens(tokens: torch.Tensor, shapes: Shapes) -> list[torch.Tensor]:
    """`cat_tokens` undone: the B×N×D batches of a (ΣB·N)×D matrix, as views."""
    parts = tokens.split([b * n for b, n in shapes])
    return [part.view(b, n, -1) for part, (b, n) in zip(parts, shapes, strict=True)]
