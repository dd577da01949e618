"""DINOv2's multi-crop augmentation: two global crops and N local crops of one image.

Both global crops get flip + colour jitter + grayscale; the first is always blurred, the second
rarely blurred and sometimes solarised; local crops are blurred half the time. Crop sizes and
scale ranges come from the config (224/96 and (0.32, 1)/(0.05, 0.32) in DINOv2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur(torch.nn.Module):
    """torchvision's `GaussianBlur(kernel_size, sigma)` on PIL images, as two 1-D passes.

    The same kernel, reflected borders, rounding and random draw of sigma (so a seeded run draws
    the same numbers); pixels agree to within one level, about 1 in 30,000 differing at all. The
    2-D version convolves 81 taps per pixel in torch's slow CPU depthwise path and was the most
    expensive step of a global crop; loader workers are what keep a GPU fed.
    """

    def __init__(self, kernel_size: int = 9, sigma: tuple[float, float] = (0.1, 2.0)):
        super().__init__()
        self.kernel_size, self.sigma = kernel_size, sigma

    def forward(self, image: Image.Image) -> Image.Image:
        sigma = T.GaussianBlur.get_params(*self.sigma)
        half = (self.kernel_size - 1) * 0.5
        taps = np.exp(-0.5 * (np.linspace(-half, half, self.kernel_size, dtype=np.float32) / sigma) ** 2)
        taps /= taps.sum()
        pixels = np.asarray(image, dtype=np.float32)
        for axis in (1, 0):  # "mirror" is torch's "reflect": the edge pixel is not repeated
            pixels = ndimage.correlate1d(pixels, taps, axis=axis, mode="mirror")
        return Image.fromarray(np.rint(pixels).astype(np.uint8), mode=image.mode)


def _blur(p: float) -> T.RandomApply:
    return T.RandomApply([GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)


def _crop_and_colour(size: int, scale: tuple[float, float]) -> list[torch.nn.Module]:
    return [
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]


def to_normalised_tensor() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@dataclass(frozen=True)
class MultiCropViews:
    global_crops: list[torch.Tensor]
    local_crops: list[torch.Tensor]


class MultiCrop:
    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        local_number: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
    ):
        finish = to_normalised_tensor()
        self.global_1 = T.Compose([*_crop_and_colour(global_size, global_scale), _blur(1.0), finish])
        self.global_2 = T.Compose(
            [*_crop_and_colour(global_size, global_scale), _blur(0.1), T.RandomSolarize(128, p=0.2), finish]
        )
        self.local = T.Compose([*_crop_and_colour(local_size, local_scale), _blur(0.5), finish])
        self.local_number = local_number

    def __call__(self, image: Image.Image) -> MultiCropViews:
        image = image.convert("RGB")
        return MultiCropViews(
            [self.global_1(image), self.global_2(image)], [self.local(image) for _ in range(self.local_number)]
        )
