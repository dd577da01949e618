"""DINOv2's colour augmentation, drawn per crop in the loader and applied per batch on the device.

Loader workers crop and flip (PIL, uint8) and draw each crop's colour parameters exactly as
torchvision's DINOv2 pipeline draws them (the same torch RNG calls in the same order); the
training device applies colour jitter (brightness, contrast, saturation and hue in the crop's own
random order), grayscale, Gaussian blur and solarisation to the whole batch, then normalises.
Why: in PIL those steps are two thirds of a worker's time per image (about 15 of 22 ms on one
core for 2 global + 8 local crops), so a GPU training at DINOv2's speeds needs about seven busy
cores to feed it; on a GPU they are elementwise work over a few million pixels a step, and the
uint8 crops that cross from worker to device are a quarter of the float ones' size. On a CPU the
batched form costs more than PIL did (every step runs on every crop), which the small crops of
CPU runs keep to a few percent of a step.

The ops follow torchvision's tensor definitions (`transforms.v2.functional`) on float pixels in
[0, 1]; PIL's versions round to uint8 after every op, so a crop differs from the PIL pipeline's by
rounding, about a level on average.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision import transforms as T

from models.embedders.base import IMAGENET_MEAN, IMAGENET_STD

JITTER = ("brightness", "contrast", "saturation", "hue")  # torchvision's ColorJitter op indices 0..3
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(len(JITTER))
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
BLUR_TAPS = 9

# One crop's draws: the jitter ops in the order they apply (-1: no jitter), the four jitter
# factors, grayscale (0/1), blur sigma (0: no blur), solarise (0/1).
ORDER = slice(0, 4)
FACTORS = slice(4, 8)
GRAYSCALE, SIGMA, SOLARISE = 8, 9, 10
DRAW_COLUMNS = 11

Colour = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 crops, their draws) -> model input


@dataclass(frozen=True)
class ColourOdds:
    """How likely each colour step is for one kind of crop (DINOv2: jitter 0.8, grayscale 0.2;
    blur 1.0 / 0.1 / 0.5 for the first global, second global and local crops; solarise 0.2 on the
    second global crop only)."""

    blur: float
    solarise: float = 0.0
    jitter: float = 0.8
    grayscale: float = 0.2


_JITTER_RANGES = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
_BLUR_SIGMA = (0.1, 2.0)


def draw_colour(odds: ColourOdds) -> torch.Tensor:
    """One crop's colour draws, from torch's RNG in torchvision's order: RandomApply(ColorJitter),
    RandomGrayscale, RandomApply(GaussianBlur), RandomSolarize (drawn only when its odds are > 0,
    as the pipeline without it draws nothing). A seed thus gives the crops torchvision would."""
    row = [-1.0] * 4 + [0.0] * (DRAW_COLUMNS - 4)  # a list, one tensor at the end: item writes took a third of the time
    if odds.jitter >= float(torch.rand(1)):
        j = _JITTER_RANGES
        order, *factors = T.ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        row[ORDER], row[FACTORS] = order.tolist(), factors
    row[GRAYSCALE] = float(torch.rand(1) < odds.grayscale)
    if odds.blur >= float(torch.rand(1)):
        row[SIGMA] = T.GaussianBlur.get_params(*_BLUR_SIGMA)
    if odds.solarise > 0:
        row[SOLARISE] = float(torch.rand(1).item() < odds.solarise)
    return torch.tensor(row)


def gray(images: torch.Tensor) -> torch.Tensor:
    """N×3×H×W → N×1×H×W luma."""
    r, g, b = images.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def hue(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate each crop's hue by its shift (a fraction of a turn) in HSV, as torchvision's
    adjust_hue; a shift of 0 returns the crop up to float rounding."""
    r, g, b = images.unbind(1)
    value, least = images.amax(1), images.amin(1)
    chroma = value - least
    some = chroma > 0
    saturation = chroma / torch.where(some, value, 1)
    span = torch.where(some, chroma, 1)
    sextant = torch.where(value == r, (g - b) / span, torch.where(value == g, 2 + (b - r) / span, 4 + (r - g) / span))
    turn = torch.remainder(sextant / 6 + shifts.view(-1, 1, 1), 1.0)
    # HSV -> RGB: channel n of (5, 3, 1) is v·(1 − s·clamp(min(k, 4 − k), 0, 1)), k = (n + 6h) mod 6
    n = torch.arange(5.0, 0.0, -2.0, device=images.device).view(1, 3, 1, 1)  # made there: no copy, no sync
    k = torch.remainder(n + 6 * turn.unsqueeze(1), 6)
    return value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1))


def blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """A 9-tap Gaussian per crop with its own sigma over reflected borders (torchvision's
    GaussianBlur); sigma 0 leaves a crop as it is. Two matrix products with banded matrices that
    hold the taps and the reflection: a per-crop kernel is a grouped convolution, slow on CPU,
    where a batched matmul is fast on CPU and GPU alike."""
    size = images.shape[-1]  # crops are square
    half = BLUR_TAPS // 2
    offsets = torch.arange(-half, half + 1, device=images.device)
    sigmas = torch.where(sigmas > 0, sigmas, 1e-3).view(-1, 1)  # taps (0, …, 1, …, 0): the identity
    taps = torch.exp(-0.5 * (offsets / sigmas) ** 2)
    taps = taps / taps.sum(1, keepdim=True)
    reach = torch.arange(size, device=images.device).view(-1, 1) + offsets  # size × taps: pixels each output reads
    reflected = torch.where(reach < 0, -reach, torch.where(reach >= size, 2 * (size - 1) - reach, reach))
    band = torch.zeros(len(images), size, size, device=images.device)
    band.scatter_add_(2, reflected.expand(len(images), -1, -1), taps.unsqueeze(1).expand(-1, size, -1))
    band = band.unsqueeze(1)  # columns: band @ column; rows: row @ bandᵀ
    return band @ images @ band.transpose(-1, -2)


def colour_batch(pixels: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """uint8 N×3×H×W crops and their `draw_colour` rows → colour-augmented, ImageNet-normalised
    float pixels, on the crops' device.

    Every step runs on every crop, with factors that leave a crop unchanged where its draws say
    the step does not apply: no data-dependent indexing, so the device never makes the host wait,
    the host issues the same few hundred ops whatever the draws, and `torch.compile` (which the
    loop uses when the run compiles) fuses them into a handful of kernels.
    """
    images = pixels.float() / 255
    column = draws.view(-1, DRAW_COLUMNS, 1, 1, 1).unbind(1)
    order = draws[:, ORDER].long()
    for slot in range(len(JITTER)):
        op = order[:, slot].view(-1, 1, 1, 1)
        factor = draws[:, FACTORS].gather(1, order[:, slot : slot + 1].clamp(min=0)).view(-1, 1, 1, 1)
        luma = gray(images)
        reference = torch.where(
            op == CONTRAST, luma.mean((1, 2, 3), keepdim=True), torch.where(op == SATURATION, luma, 0)
        )
        blend = torch.where((op >= BRIGHTNESS) & (op <= SATURATION), factor, 1)  # brightness blends with black
        images = (blend * images + (1 - blend) * reference).clamp(0, 1)
        images = hue(images, torch.where(op == HUE, factor, 0))
    images = torch.where(column[GRAYSCALE] > 0, gray(images).expand_as(images), images)
    images = blur(images, draws[:, SIGMA])
    images = torch.where((column[SOLARISE] > 0) & (images >= 127.5 / 255), 1 - images, images)  # PIL: >= 128 of 255
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
        images[:, channel] = (images[:, channel] - mean) / std
    return images


def colour_for(compiled: bool) -> Colour:
    """`colour_batch`, compiled when the run compiles: eager, its few hundred elementwise ops each
    read and write the whole batch; compiled they fuse into a few kernels per jitter slot. Shapes
    are dynamic, so one graph serves every batch size (crops of 64 pixels or less get a second)."""
    return torch.compile(colour_batch, dynamic=True) if compiled else colour_batch
