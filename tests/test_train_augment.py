"""DINOv2's multi-crop views: their shapes, and the two-pass blur agreeing with torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as samples
from torchvision import transforms as T

from training.augment import GaussianBlur, MultiCrop


@pytest.mark.parametrize("size", [224, 98])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_two_pass_blur_is_torchvisions_to_one_level(size, mode):
    image = Image.fromarray(samples.astronaut()).convert(mode).resize((size, size))
    ours, theirs = GaussianBlur(9, (0.1, 2.0)), T.GaussianBlur(9, (0.1, 2.0))
    differing = 0
    for seed in range(20):  # the same seed draws the same sigma in both
        torch.manual_seed(seed)
        a = np.asarray(ours(image), dtype=np.int16)
        torch.manual_seed(seed)
        b = np.asarray(theirs(image), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1
        differing += int((a != b).sum())
    assert differing / (20 * a.size) < 1e-3
    torch.manual_seed(0)
    assert not np.array_equal(np.asarray(ours(image)), np.asarray(image)), "the blur did nothing"


def test_multi_crop_gives_two_global_and_n_local_normalised_views():
    image = Image.fromarray(samples.coffee())
    torch.manual_seed(0)
    views = MultiCrop(global_size=224, local_size=98, local_number=8)(image)
    assert [tuple(v.shape) for v in views.global_crops] == [(3, 224, 224)] * 2
    assert [tuple(v.shape) for v in views.local_crops] == [(3, 98, 98)] * 8
    pixels = torch.cat([v.flatten() for v in views.global_crops])
    assert -3 < float(pixels.mean()) < 3 and float(pixels.std()) > 0.1
    torch.manual_seed(0)
    again = MultiCrop(global_size=224, local_size=98, local_number=8)(image)
    assert all(torch.equal(a, b) for a, b in zip(views.local_crops, again.local_crops, strict=True))
