"""Fuzzing the decoder: mutated bytes of every format a crawl serves end as a clean RGB JPEG or a
named rejection, never an exception, and each within a bounded time.

Seeds are small real encodings (JPEG baseline, progressive and CMYK, PNG RGB and palette, WebP,
GIF, TIFF, BMP); mutations are what broken crawled files look like: flipped bits, truncation,
inserted garbage, chunks swapped or overwritten. The default suite runs 1,200 examples; `-m slow`
runs 10,000 more with a random seed.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from curation.decode import CleanImage, DecodeLimits, Rejection, clean_image
from models.embedders import Preprocess
from models.embedders.device_decode import UndecodableJpeg, _decoded_bytes, decode_batch

LIMITS = DecodeLimits(min_side=8)
SECONDS_PER_INPUT = 2.0


def _picture(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:56]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2], -1).astype(np.uint8) + rng.integers(0, 20, (40, 56, 3), np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def _encode(mode: str, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image = _picture(mode)
    if mode == "P":
        image = _picture("RGB").quantize(32)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


SEEDS = {
    "jpeg": _encode("RGB", "JPEG", quality=80),
    "jpeg_progressive": _encode("RGB", "JPEG", progressive=True),
    "jpeg_cmyk": _encode("CMYK", "JPEG"),
    "png": _encode("RGB", "PNG"),
    "png_palette": _encode("P", "PNG"),
    "webp": _encode("RGB", "WEBP"),
    "gif": _encode("P", "GIF"),
    "tiff": _encode("RGB", "TIFF"),
    "bmp": _encode("RGB", "BMP"),
}


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """One seed encoding with 1-4 mutations, mostly near the header where parsers branch."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        where = draw(st.one_of(st.integers(0, min(len(data) - 1, 128)), st.integers(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "swap"]))
        if kind == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[where:]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[where : where + len(chunk)] = chunk
        else:
            size = draw(st.integers(1, 64))
            other = draw(st.integers(0, len(data) - 1))
            a, b = sorted((where, other))
            if b - a >= size:
                data[a : a + size], data[b : b + size] = data[b : b + size], data[a : a + size]
    return bytes(data)


def check_one_fate(data: bytes) -> None:
    started = time.perf_counter()
    result = clean_image(data, LIMITS)
    assert time.perf_counter() - started < SECONDS_PER_INPUT
    assert isinstance(result, CleanImage | Rejection)
    if isinstance(result, Rejection):
        assert result.reason and result.detail
        return
    reopened = Image.open(io.BytesIO(result.jpeg))
    reopened.load()
    assert (reopened.format, reopened.mode) == ("JPEG", "RGB")
    assert reopened.size == (result.width, result.height)


FUZZ = settings(
    deadline=timedelta(seconds=SECONDS_PER_INPUT), suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_encoding_is_accepted(name):
    assert isinstance(clean_image(SEEDS[name], LIMITS), CleanImage)


@settings(FUZZ, max_examples=1200, derandomize=True)
@given(mutated_images())
def test_mutated_images_end_as_an_image_or_a_rejection(data):
    check_one_fate(data)


@pytest.mark.slow
@settings(FUZZ, max_examples=10_000)
@given(mutated_images())
def test_ten_thousand_mutated_images_end_as_an_image_or_a_rejection(data):
    check_one_fate(data)


@settings(FUZZ, max_examples=600, derandomize=True)
@given(mutated_images())
def test_a_mutated_files_decoded_size_is_a_number_never_an_exception(data):
    """GPU decoding sizes its parts from each file's header before nvjpeg sees the file: a broken
    header counts as 0 bytes (the decoder then refuses the file), never an exception."""
    size = _decoded_bytes(data)
    assert isinstance(size, int) and size >= 0


@settings(FUZZ, max_examples=300, derandomize=True)
@given(mutated_images())
def test_a_mutated_file_in_a_device_decoded_batch_is_pixels_or_named_by_its_index(jpeg_decoder, data):
    """The embed stage's device decoding (its code run on the CPU, with each library) between two
    good files: the batch decodes, or the error names the mutated file (the stage turns it into one
    line naming the key)."""
    preprocess, good = Preprocess(resize=64, crop=56), SEEDS["jpeg"]
    try:
        crops = decode_batch([good, data, good], preprocess, torch.device("cpu"), decoder=jpeg_decoder)
    except UndecodableJpeg as exc:
        assert exc.index == 1 and exc.__cause__ is not None
        return
    assert crops.shape == (3, 56, 56, 3) and crops.dtype == torch.uint8
    assert torch.equal(crops[0], crops[2])
