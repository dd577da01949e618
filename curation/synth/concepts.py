"""Visually distinct concepts for the synthetic crawl: procedural scenes and crops of sample photos.

Each concept renders an endless supply of *different* images that still look alike (same kind of
structure and palette), which is what retrieval by concept needs. Photo concepts crop the sample
photos scikit-image ships; crops of one photo overlap by at most `MAX_CROP_IOU`, so two of them
are never near duplicates of each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

Size = tuple[int, int]
MAX_CROP_IOU = 0.2


class ConceptExhausted(Exception):
    """A photo concept cannot give another crop distinct enough from the ones it gave."""


def _grid(size: Size) -> tuple[np.ndarray, np.ndarray]:
    w, h = size
    return np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))


def _two_colours(rng: np.random.Generator, hue_lo: float, hue_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """A bright and a dark colour with hues drawn independently from the concept's hue range."""
    hue_a, hue_b = rng.uniform(hue_lo, hue_hi, 2)
    bright, dark = (int(v) for v in rng.integers(170, 256, 1)), (int(v) for v in rng.integers(30, 110, 1))
    a = np.array(Image.new("HSV", (1, 1), (int(hue_a * 255), 220, *bright)).convert("RGB").getpixel((0, 0)))
    b = np.array(Image.new("HSV", (1, 1), (int(hue_b * 255), 160, *dark)).convert("RGB").getpixel((0, 0)))
    return a.astype(np.float32), b.astype(np.float32)


def _blend(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> Image.Image:
    pixels = mask[..., None] * a + (1 - mask[..., None]) * b
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def stripes(rng: np.random.Generator, size: Size) -> Image.Image:
    """Oriented sine gratings in warm colours, a few cycles per image (finer ones alias in small models)."""
    x, y = _grid(size)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(1.5, 5)
    phase = rng.uniform(0, 2 * np.pi)
    mask = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    return _blend(mask, *_two_colours(rng, 0.0, 0.12))


def checkerboard(rng: np.random.Generator, size: Size) -> Image.Image:
    """Rotated checkerboards in cool colours."""
    x, y = _grid(size)
    angle, cells = rng.uniform(0, np.pi / 2), rng.uniform(1.5, 5)
    u = (x * np.cos(angle) - y * np.sin(angle)) * cells + rng.uniform(0, 1)
    v = (x * np.sin(angle) + y * np.cos(angle)) * cells + rng.uniform(0, 1)
    mask = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    return _blend(mask, *_two_colours(rng, 0.45, 0.75))


def bubbles(rng: np.random.Generator, size: Size) -> Image.Image:
    """Bright discs of many colours on a dark background."""
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 40, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 25))):
        cx, cy = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        r = rng.uniform(0.03, 0.15) * min(size)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.integers(120, 256, 3)))
    return image


def landscape(rng: np.random.Generator, size: Size) -> Image.Image:
    """Sky gradient (day to dusk), layered mountain ridges, green ground, sometimes a sun."""
    x, y = _grid(size)
    top, bottom = rng.uniform([60, 100, 200], [140, 190, 255]), rng.uniform([180, 150, 150], [255, 240, 255])
    pixels = top + (bottom - top) * y[..., None]
    for layer, base in enumerate(sorted(rng.uniform(0.25, 0.8, int(rng.integers(1, 5))))):
        ridge = (
            base
            - 0.05 * layer
            + sum(
                rng.uniform(0.02, 0.1) * np.sin(2 * np.pi * rng.uniform(0.5, 4) * x[0] + rng.uniform(0, 2 * np.pi))
                for _ in range(3)
            )
        )
        pixels[y > ridge[None, :]] = rng.uniform(40, 150, 3) - 15 * layer
    pixels[y > rng.uniform(0.55, 0.95)] = rng.uniform([30, 100, 20], [140, 190, 80])
    if rng.random() < 0.6:
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3), rng.uniform(0.04, 0.08)
        pixels[((x - cx) ** 2 + (y - cy) ** 2) < r**2] = [255, 230, 120]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def clouds(rng: np.random.Generator, size: Size) -> Image.Image:
    """Low-pass filtered colour noise (purple/green fractal clouds)."""
    w, h = size
    octaves = np.zeros((h, w, 3), np.float32)
    for level in range(1, 5):
        coarse = rng.normal(0, 1, (2**level + 1, 2**level + 1, 3)).astype(np.float32)
        up = np.asarray(
            Image.fromarray(((coarse + 3) * 40).clip(0, 255).astype(np.uint8)).resize(size, Image.BICUBIC), np.float32
        )
        octaves += (up - 120) / level
    tint = np.array([150, 60, 170] if rng.random() < 0.5 else [60, 160, 90], np.float32)
    return Image.fromarray(np.clip(tint + octaves, 0, 255).astype(np.uint8))


@dataclass
class PhotoConcept:
    """Crops of one sample photo; crops already handed out are remembered to bound their overlap."""

    photo: np.ndarray
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __call__(self, rng: np.random.Generator, size: Size) -> Image.Image:
        h, w = self.photo.shape[:2]
        for _ in range(500):
            side = rng.uniform(0.3, 0.5) * min(w, h)
            x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(_iou(box, other) < MAX_CROP_IOU for other in self.boxes):
                break
        else:
            raise ConceptExhausted("no crop left that overlaps earlier crops of this photo by less than MAX_CROP_IOU")
        self.boxes.append(box)
        return Image.fromarray(self.photo).crop(tuple(int(v) for v in box)).resize(size, Image.BICUBIC)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


Render = Callable[[np.random.Generator, Size], Image.Image]


def rings(rng: np.random.Generator, size: Size) -> Image.Image:
    """Concentric rings around a point that may lie outside the picture (then they read as arcs)."""
    x, y = _grid(size)
    cx, cy, freq = rng.uniform(-0.3, 1.3), rng.uniform(-0.3, 1.3), rng.uniform(2, 6)
    mask = 0.5 + 0.5 * np.sin(2 * np.pi * freq * np.hypot(x - cx, y - cy) + rng.uniform(0, 2 * np.pi))
    return _blend(mask, *_two_colours(rng, 0.0, 1.0))


def waves(rng: np.random.Generator, size: Size) -> Image.Image:
    """Gratings bent by a slow sine: stripes' fine-grained neighbour."""
    x, y = _grid(size)
    angle, freq, bend = rng.uniform(0, np.pi), rng.uniform(1.5, 5), rng.uniform(0.08, 0.2)
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    mask = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (u + bend * np.sin(2 * np.pi * rng.uniform(1, 3) * v)))
    return _blend(mask, *_two_colours(rng, 0.0, 1.0))


def dots(rng: np.random.Generator, size: Size) -> Image.Image:
    """A rotated lattice of equal discs."""
    x, y = _grid(size)
    angle, cells, radius = rng.uniform(0, np.pi / 2), rng.uniform(3, 8), rng.uniform(0.15, 0.35)
    u = (x * np.cos(angle) - y * np.sin(angle)) * cells + rng.uniform(0, 1)
    v = (x * np.sin(angle) + y * np.cos(angle)) * cells + rng.uniform(0, 1)
    mask = (np.hypot(u - np.round(u), v - np.round(v)) < radius).astype(np.float32)
    return _blend(mask, *_two_colours(rng, 0.0, 1.0))


def mosaic(rng: np.random.Generator, size: Size) -> Image.Image:
    """Voronoi cells, each a flat colour: a stained-glass pattern with straight borders."""
    x, y = _grid(size)
    sites = rng.uniform(0, 1, (int(rng.integers(6, 20)), 2))
    nearest = np.argmin((x[..., None] - sites[:, 0]) ** 2 + (y[..., None] - sites[:, 1]) ** 2, axis=-1)
    colours = rng.integers(0, 256, (len(sites), 3))
    return Image.fromarray(colours[nearest].astype(np.uint8))


def with_landmarks(render: Render) -> Render:
    """Add 2-4 random shapes: what makes one picture of a pattern unlike another, as objects do in photos.

    A pattern alone is set by a few parameters, so two random draws can be near copies; a copy
    detector would rightly pair them while the crawl's truth would call them unique.
    """

    def render_with_landmarks(rng: np.random.Generator, size: Size) -> Image.Image:
        image = render(rng, size)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 5))):
            w, h = rng.uniform(0.12, 0.25, 2) * np.array(size)
            x, y = rng.uniform(0, size[0] - w), rng.uniform(0, size[1] - h)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        return image

    return render_with_landmarks


PROCEDURAL: dict[str, Render] = {
    "stripes": with_landmarks(stripes),
    "checkerboard": with_landmarks(checkerboard),
    "bubbles": bubbles,
    "landscape": with_landmarks(landscape),
    "clouds": with_landmarks(clouds),
}
# The curation-value benchmark's concepts: the demo's five procedural ones and four more, some
# pairs deliberately close (stripes/waves, checkerboard/dots/mosaic); the four new ones take any hue.
TEXTURES: dict[str, Render] = {
    **PROCEDURAL,
    "rings": with_landmarks(rings),
    "waves": with_landmarks(waves),
    "dots": with_landmarks(dots),
    "mosaic": mosaic,
}
PHOTOS = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "cells": "immunohistochemistry"}


def photo_concepts() -> dict[str, PhotoConcept]:
    """Concepts from the photos scikit-image ships inside its wheel (nothing is downloaded)."""
    from skimage import data

    return {name: PhotoConcept(np.ascontiguousarray(getattr(data, fn)()[..., :3])) for name, fn in PHOTOS.items()}
