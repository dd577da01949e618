"""DINOv2's multi-crop views: crops from the workers, colour on the device, and the two together
against torchvision's PIL pipeline drawn from the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as samples
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from models.embedders.base import IMAGENET_MEAN, IMAGENET_STD
from training import colour
from training.augment import MultiCrop
from training.data import CollateCrops

# torchvision's float-tensor op for one crop and one factor: what colouring a batch must give per crop.
TORCHVISION = {
    "brightness": F.adjust_brightness,
    "contrast": F.adjust_contrast,
    "saturation": F.adjust_saturation,
    "hue": F.adjust_hue,
    "grayscale": lambda image, _: F.rgb_to_grayscale(image, num_output_channels=3),
    "blur": lambda image, sigma: F.gaussian_blur(image, [9, 9], [sigma, sigma]),
    "solarise": lambda image, _: F.solarize(image, 127.5 / 255),
}
FACTORS = {
    "brightness": (0.6, 1.4),
    "contrast": (0.6, 1.4),
    "saturation": (0.8, 1.2),
    "hue": (-0.1, 0.1),
    "grayscale": (1, 1),
    "blur": (0.1, 2.0),
    "solarise": (1, 1),
}
COLUMN = {"grayscale": colour.GRAYSCALE, "blur": colour.SIGMA, "solarise": colour.SOLARISE}
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _crops(size: int) -> torch.Tensor:
    """Six uint8 crops of three sample photos (and their flips)."""
    photos = [samples.astronaut(), samples.coffee(), samples.chelsea()]
    crops = [torch.from_numpy(np.array(Image.fromarray(p).resize((size, size)))).permute(2, 0, 1) for p in photos]
    return torch.stack(crops + [c.flip(-1) for c in crops])


def _only(op: str, factors: torch.Tensor) -> torch.Tensor:
    """Draw rows that apply `op` alone, with each crop's factor."""
    draws = torch.zeros(len(factors), colour.DRAW_COLUMNS)
    draws[:, colour.ORDER] = -1
    if op in colour.JITTER:
        index = colour.JITTER.index(op)
        draws[:, colour.ORDER.start] = index
        draws[:, colour.FACTORS.start + index] = factors
    else:
        draws[:, COLUMN[op]] = factors
    return draws


@pytest.mark.parametrize("op", sorted(TORCHVISION))
@pytest.mark.parametrize("size", [32, 96])
def test_each_colour_step_on_a_batch_is_torchvisions_per_crop_with_that_crops_factor(op, size):
    pixels = _crops(size)
    low, high = FACTORS[op]
    factors = torch.linspace(low, high, len(pixels))
    ours = colour.colour_batch(pixels, _only(op, factors)) * STD + MEAN
    images = pixels.float() / 255
    theirs = torch.stack([TORCHVISION[op](image, float(f)) for image, f in zip(images, factors, strict=True)])
    # PIL's luma weights (0.299) against torchvision's tensor ones (0.2989): a tenth of a level
    assert (ours - theirs).abs().max() < 5e-4
    assert (ours - images).abs().max() > 0.05, "the step did nothing"


def test_crops_whose_draws_apply_nothing_come_out_only_normalised():
    pixels = _crops(32)
    untouched = colour.colour_batch(pixels, _only("blur", torch.zeros(len(pixels))))
    assert (untouched * STD + MEAN - pixels.float() / 255).abs().max() < 1e-6


def _torchvision_pipeline(size: int, scale: tuple[float, float], blur: float, solarise: float, pil: bool) -> T.Compose:
    """DINOv2's augmentation for one kind of crop as torchvision runs it: all in PIL, or cropped in
    PIL and coloured on float tensors (the same RNG draws either way)."""
    steps = [
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        *([] if pil else [T.ToTensor()]),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(9, (0.1, 2.0))], p=blur),
    ]
    if solarise:
        steps.append(T.RandomSolarize(128 if pil else 127.5 / 255, p=solarise))
    return T.Compose([*steps, T.PILToTensor()] if pil else steps)


def _crop_differences(pil: bool, seeds: int = 24, local_number: int = 4) -> list[float]:
    """Per crop, the mean absolute difference in pixel levels between our crops and torchvision's,
    each drawn from the same seed."""
    image = Image.fromarray(samples.astronaut()).resize((300, 240))
    pipelines = [
        _torchvision_pipeline(64, (0.32, 1.0), 1.0, 0.0, pil),
        _torchvision_pipeline(64, (0.32, 1.0), 0.1, 0.2, pil),
    ]
    pipelines += [_torchvision_pipeline(32, (0.05, 0.32), 0.5, 0.0, pil)] * local_number
    differences = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        theirs = [p(image).float() * (1 if pil else 255) for p in pipelines]
        torch.manual_seed(seed)
        views = MultiCrop(64, 32, local_number)(image)
        batch = CollateCrops((4, 4), 0.5, (0.1, 0.5))([views]).coloured()
        ours = [(crop * STD + MEAN) * 255 for crop in [*batch.global_crops, *batch.local_crops]]
        differences += [
            float((a - b).abs().max() if not pil else (a - b).abs().mean()) for a, b in zip(ours, theirs, strict=True)
        ]
    return differences


def test_the_same_seed_gives_torchvisions_crops_draw_for_draw():
    """Cropping in the worker and colouring a batch reproduce DINOv2's pipeline draw for draw: the
    same crop boxes, flips, jitter order and factors, grayscale, blur sigma and solarisation. Against
    torchvision colouring float tensors, every pixel of 144 crops agrees to a tenth of a level."""
    assert max(_crop_differences(pil=False)) < 0.15


def test_the_same_seed_gives_torchvisions_pil_crops_up_to_rounding():
    """Against the PIL pipeline itself: PIL rounds to uint8 after every op and rotates hue in 8-bit
    HSV, so a crop's pixels differ by about a level on average (measured: 1.2)."""
    differences = _crop_differences(pil=True)
    assert np.mean(differences) < 1.5 and max(differences) < 4, sorted(differences)[-5:]


def test_multi_crop_gives_two_global_and_n_local_uint8_views_with_their_colour_draws():
    image = Image.fromarray(samples.coffee())
    torch.manual_seed(0)
    views = MultiCrop(global_size=224, local_size=98, local_number=8)(image)
    assert [tuple(v.pixels.shape) for v in views.global_crops] == [(3, 224, 224)] * 2
    assert [tuple(v.pixels.shape) for v in views.local_crops] == [(3, 98, 98)] * 8
    assert {v.pixels.dtype for v in [*views.global_crops, *views.local_crops]} == {torch.uint8}
    assert float(views.global_crops[0].colour[colour.SIGMA]) > 0, "the first global crop is always blurred"
    torch.manual_seed(0)
    again = MultiCrop(global_size=224, local_size=98, local_number=8)(image)
    for a, b in zip(views.local_crops, again.local_crops, strict=True):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.colour, b.colour)


def test_a_batch_without_local_crops_colours_its_global_ones():
    image = Image.fromarray(samples.coffee())
    batch = CollateCrops((2, 2), 0.5, (0.1, 0.5))([MultiCrop(28, 14, 0)(image) for _ in range(3)]).coloured()
    assert tuple(batch.global_crops.shape) == (6, 3, 28, 28) and batch.global_crops.dtype == torch.float32
    assert batch.local_crops.numel() == 0 and batch.global_colour is None


@pytest.mark.slow
def test_compiled_colour_matches_eager_and_compiles_once_for_every_batch_size():
    compiled = colour.colour_for(compiled=True)
    odds = colour.ColourOdds(blur=0.5, solarise=0.2)

    def batch(crops: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        draws = torch.stack([colour.draw_colour(odds) for _ in range(crops)])
        return torch.randint(0, 256, (crops, 3, size, size), dtype=torch.uint8), draws

    compiled(*batch(12, 96, 0))  # compiles here
    with torch._dynamo.config.patch(error_on_recompile=True):  # global and local crops: one graph
        for crops, size, seed in ((40, 96, 1), (7, 72, 2)):
            pixels, draws = batch(crops, size, seed)
            torch.testing.assert_close(compiled(pixels, draws), colour.colour_batch(pixels, draws), rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_colouring_on_cuda_gives_the_cpus_crops_and_never_makes_the_host_wait(compiled):
    torch.manual_seed(0)
    images = [Image.fromarray(samples.coffee()) for _ in range(4)]
    batch = CollateCrops((16, 16), 0.5, (0.1, 0.5))([MultiCrop(224, 98, 8)(image) for image in images])
    colour_on = colour.colour_for(compiled)
    on_cpu = batch.coloured()
    on_cuda = batch.pin_memory().to(torch.device("cuda"))
    on_cuda.coloured(colour_on)  # compiles outside the watched call
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_cuda = on_cuda.coloured(colour_on)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name in ("global_crops", "local_crops"):
        torch.testing.assert_close(getattr(on_cuda, name).cpu(), getattr(on_cpu, name), rtol=0, atol=2e-3)
