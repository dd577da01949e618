"""iBOT block masking (BEiT-style rectangles) and the per-batch mask plan DINOv2 uses.

Half the global crops (`probability`) get a mask; their masked fractions are spread evenly over
`ratio` = (min, max) by giving the i-th masked crop a target drawn from the i-th slice of that
range. Unlike DINOv2's generator, which can stop short when no rectangle fits, this one tops up
with single patches, so every mask holds exactly its target count.
"""

from __future__ import annotations

import math
import random

import torch


class BlockMaskGenerator:
    def __init__(
        self,
        grid: tuple[int, int],
        max_block_fraction: float = 0.5,
        min_block_patches: int = 4,
        min_aspect: float = 0.3,
    ):
        self.height, self.width = grid
        self.max_block_patches = max(1, int(max_block_fraction * self.height * self.width))
        self.min_block_patches = min_block_patches
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def __call__(self, count: int, rng: random.Random) -> torch.Tensor:
        """An H×W boolean mask with exactly `count` patches set."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = min(count, self.num_patches)
        masked = 0
        while masked < count:
            added = self._add_block(mask, min(count - masked, self.max_block_patches), rng)
            if added == 0:
                break
            masked += added
        if masked < count:
            free = (~mask).flatten().nonzero().flatten().tolist()
            for index in rng.sample(free, count - masked):
                mask.view(-1)[index] = True
        return mask

    def _add_block(self, mask: torch.Tensor, budget: int, rng: random.Random) -> int:
        """Mask one random rectangle that adds between 1 and `budget` new patches; 0 if none fit in 10 tries."""
        for _ in range(10):
            area = rng.uniform(min(self.min_block_patches, budget), budget)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (0 < h < self.height and 0 < w < self.width):
                continue
            top, left = rng.randint(0, self.height - h), rng.randint(0, self.width - w)
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:
                block.fill_(True)
                return new
        return 0


def batch_masks(
    generator: BlockMaskGenerator,
    num_crops: int,
    probability: float,
    ratio: tuple[float, float],
    rng: random.Random,
) -> torch.Tensor:
    """num_crops × N masks: `int(num_crops · probability)` masked crops in shuffled positions."""
    n = generator.num_patches
    num_masked = int(num_crops * probability)
    bounds = torch.linspace(ratio[0], ratio[1], num_masked + 1).tolist()
    masks = [generator(int(n * rng.uniform(bounds[i], bounds[i + 1])), rng).flatten() for i in range(num_masked)]
    masks += [torch.zeros(n, dtype=torch.bool)] * (num_crops - num_masked)
    rng.shuffle(masks)
    return torch.stack(masks)


def masked_rows(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the masked patches are, for the loader to compute on the CPU.

    Returns their flat indices into the crops' patch tokens (crops × N, in `masks[masks]` order)
    and each one's iBOT weight, 1 / (masked patches of its crop). On a GPU, selecting patches by a
    boolean mask, or summing a mask to weigh them, makes the host wait for the device (the result's
    size lives there); these come with the batch instead.
    """
    rows = masks.flatten().nonzero().squeeze(1)
    per_crop = masks.sum(dim=1, keepdim=True).clamp(min=1)
    weights = (1.0 / per_crop).expand_as(masks)[masks]
    return rows, weights


def select_masked(patch_tokens: torch.Tensor, mask_rows: torch.Tensor) -> torch.Tensor:
    """The masked patches' tokens (M×D, `masks[masks]` order) from crops × N × D patch tokens, by
    the flat indices `masked_rows` gives: no host sync, and no copy of every crop's tokens (which
    flattening the strided patch-token view would make)."""
    n = patch_tokens.shape[1]
    return patch_tokens[mask_rows // n, mask_rows % n]
