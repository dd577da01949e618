"""DINOv2's multi-crop augmentation, the part that runs in loader workers: two global crops and N
local crops of one image, each cropped, resized and flipped (PIL, uint8), with its colour steps
drawn but not applied (`training.colour` applies them per batch on the training device).

Both global crops get flip + colour jitter + grayscale; the first is always blurred, the second
rarely blurred and sometimes solarised; local crops are blurred half the time. Crop sizes and
scale ranges come from the config (224/96 and (0.32, 1)/(0.05, 0.32) in DINOv2).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from training.colour import ColourOdds, draw_colour


class View(NamedTuple):
    pixels: torch.Tensor  # uint8 3×S×S
    colour: torch.Tensor  # its `draw_colour` row


class MultiCropViews(NamedTuple):
    global_crops: list[View]
    local_crops: list[View]


class Crop:
    """One kind of crop: random resized crop (bicubic), horizontal flip, colour draws."""

    def __init__(self, size: int, scale: tuple[float, float], odds: ColourOdds):
        self.crop = T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)
        self.flip = T.RandomHorizontalFlip(p=0.5)
        self.odds = odds

    def __call__(self, image: Image.Image) -> View:
        pixels = torch.from_numpy(np.array(self.flip(self.crop(image)))).permute(2, 0, 1)
        return View(pixels, draw_colour(self.odds))


class MultiCrop:
    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        local_number: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
    ):
        self.global_1 = Crop(global_size, global_scale, ColourOdds(blur=1.0))
        self.global_2 = Crop(global_size, global_scale, ColourOdds(blur=0.1, solarise=0.2))
        self.local = Crop(local_size, local_scale, ColourOdds(blur=0.5))
        self.local_number = local_number

    def __call__(self, image: Image.Image) -> MultiCropViews:
        image = image.convert("RGB")
        return MultiCropViews(
            [self.global_1(image), self.global_2(image)], [self.local(image) for _ in range(self.local_number)]
        )
