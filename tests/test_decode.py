"""Defensive decoding: each planted fault gets its named reason; real-world oddities become clean RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curation.decode import CleanImage, DecodeLimits, Rejection, clean_image
from curation.synth.crawl import ODDITIES, jpeg, odd_encoding

LIMITS = DecodeLimits()


def gradient(w: int = 120, h: int = 80) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, x[::-1], np.full_like(x, 90)], -1))


def test_clean_rgb_jpeg_is_kept_byte_for_byte():
    data = jpeg(gradient())
    result = clean_image(data, LIMITS)
    assert isinstance(result, CleanImage) and result.jpeg == data and not result.reencoded
    assert (result.width, result.height) == (120, 80)


@pytest.mark.parametrize("oddity", ODDITIES)
def test_oddities_become_rgb_jpeg_with_the_right_size(oddity):
    data, _ = odd_encoding(gradient(), oddity)
    result = clean_image(data, LIMITS)
    assert isinstance(result, CleanImage)
    decoded = Image.open(io.BytesIO(result.jpeg))
    assert decoded.format == "JPEG" and decoded.mode == "RGB"
    assert decoded.size == (120, 80) == (result.width, result.height)


def test_exif_rotation_is_applied_not_just_the_size():
    original = gradient()
    data, _ = odd_encoding(original, "exif_rotated")
    stored = np.asarray(Image.open(io.BytesIO(clean_image(data, LIMITS).jpeg)), np.float32)
    assert np.abs(stored - np.asarray(original, np.float32)).mean() < 4  # JPEG noise only


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    result = clean_image(buffer.getvalue(), LIMITS)
    assert np.asarray(Image.open(io.BytesIO(result.jpeg))).min() > 245


def test_sixteen_bit_keeps_its_range():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    pixels = np.asarray(Image.open(io.BytesIO(clean_image(buffer.getvalue(), LIMITS).jpeg)))
    assert pixels.min() < 10 and pixels.max() > 245


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html><body>oops</body></html>", "not_an_image"),
        (jpeg(gradient(200, 200))[:1500], "truncated"),
        (jpeg(Image.new("RGB", (1, 1))), "too_small"),
    ],
)
def test_faults_are_named(data, reason):
    result = clean_image(data, LIMITS)
    assert isinstance(result, Rejection) and result.reason == reason and result.detail


def test_decompression_bombs_are_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    assert clean_image(buffer.getvalue(), LIMITS).reason == "decompression_bomb"
    small_limit = DecodeLimits(max_pixels=100 * 100)
    assert clean_image(jpeg(gradient(200, 200)), small_limit).reason == "decompression_bomb"
