"""`tiny`: a deterministic, weight-free embedder for tests and the demo.

It is built to behave like the two embedders the paper uses, on the synthetic crawl: near
duplicates (re-encoded, resized, lightly cropped or recoloured copies) land very close (like a
copy-detection model), and images of the same concept are closer than images of different
concepts (like a semantic backbone). Three L2-normalised parts are concatenated with weights:

- layout: the image blurred and pooled to 8×8 in an opponent colour space, each channel
  mean-centred — the identity of a picture, insensitive to compression, scale and small crops
  or colour shifts;
- colour: a soft 4×4×4 RGB histogram (square-rooted) — the palette of a concept;
- texture: gradient energy per orientation (8 bins) at two scales — the structure of a concept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.embedders.base import Preprocess

# Weights chosen on the synthetic crawl (seed 0): every planted duplicate pair scores >= 0.92 and
# no two unique images do; see tests/test_embedders.py for the figures asserted.
LAYOUT_WEIGHT, COLOUR_WEIGHT, TEXTURE_WEIGHT = 0.8, 0.6, 0.3
BLUR_SIGMA = 2.0
PREPROCESS = Preprocess(resize=64, crop=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class TinyEmbedder(nn.Module):
    """Input B×3×64×64 in [0, 1]; output B×(192 + 64 + 16) features.

    `semantic=True` drops the layout part (weight 0): what is left describes the concept, not the
    picture, like the retrieval backbone of the paper next to its copy detector.
    """

    dim = 3 * 64 + 64 + 16

    def __init__(self, semantic: bool = False) -> None:
        super().__init__()
        self.layout_weight = 0.0 if semantic else LAYOUT_WEIGHT
        opponent = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, -0.5, 0.0], [0.25, 0.25, -0.5]])
        self.register_buffer("opponent", opponent, persistent=False)
        angles = torch.arange(8) * math.pi / 8
        self.register_buffer("directions", torch.stack([angles.cos(), angles.sin()], 1), persistent=False)
        self.register_buffer("bin_centres", (torch.arange(4) + 0.5) / 4, persistent=False)
        taps = torch.exp(-(torch.arange(-4, 5.0) ** 2) / (2 * BLUR_SIGMA**2))
        self.register_buffer("blur_taps", taps / taps.sum(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [
            (self.layout(x), self.layout_weight),
            (self.colour(x), COLOUR_WEIGHT),
            (self.texture(x), TEXTURE_WEIGHT),
        ]
        return torch.cat([F.normalize(p, dim=-1) * w for p, w in parts], dim=-1)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        opponent = torch.einsum("oc,bchw->bohw", self.opponent, x)
        row, column = (
            self.blur_taps.view(1, 1, 1, 9).repeat(3, 1, 1, 1),
            self.blur_taps.view(1, 1, 9, 1).repeat(3, 1, 1, 1),
        )
        blurred = F.conv2d(F.conv2d(F.pad(opponent, (4, 4, 4, 4), mode="replicate"), row, groups=3), column, groups=3)
        pooled = F.adaptive_avg_pool2d(blurred, 8)
        return (pooled - pooled.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        pixels = F.avg_pool2d(x, 4).flatten(2)  # B×3×256
        weights = torch.exp(-((pixels[..., None] - self.bin_centres) ** 2) / (2 * 0.15**2))  # B×3×P×4
        weights = weights / weights.sum(-1, keepdim=True)
        joint = torch.einsum("bpi,bpj,bpk->bijk", weights[:, 0], weights[:, 1], weights[:, 2])
        return joint.flatten(1).clamp_min(0).sqrt()

    def texture(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.mean(1, keepdim=True)
        features = []
        for image in (gray, F.avg_pool2d(gray, 2)):
            gx = image[..., :, 1:] - image[..., :, :-1]
            gy = image[..., 1:, :] - image[..., :-1, :]
            grad = torch.stack([gx[..., :-1, :].flatten(1), gy[..., :, :-1].flatten(1)], -1)  # B×P×2
            energy = (grad @ self.directions.T).abs()  # B×P×8
            features.append(energy.mean(1))
        return torch.cat(features, -1)
