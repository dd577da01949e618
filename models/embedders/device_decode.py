"""JPEG decoding and preprocessing where the model runs: nvjpeg on a GPU, so an embed actor needs
no CPU cores to keep a ViT-H fed (PIL decodes a few hundred web images per second per core; a
GPU embeds over a thousand).

The output matches `Preprocess` (shorter side resized bicubic with antialiasing, centre crop,
uint8 HWC) closely enough that embeddings agree to cosine >= 0.999 with the CPU path; the tests
run this same code with `device="cpu"`. Ingest guarantees every pool and reference image is an
RGB JPEG; one the decoder still refuses goes through `Preprocess.from_jpeg` on the CPU instead
of failing its batch.

torchvision deprecated its image decoders in 0.29 in favour of TorchCodec; they still work, and
this module is the one place to change when they go.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from models.embedders.base import Preprocess


def decode_batch(jpegs: list[bytes], preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """B×crop×crop×3 uint8 on `device` from B JPEG files."""
    data = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in jpegs]
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batched call: decode one by one to find it
        images = [_decode_or_none(tensor, device) for tensor in data]
    crops = [
        _resize_crop(image, preprocess) if image is not None else _on_cpu(jpeg, preprocess, device)
        for image, jpeg in zip(images, jpegs, strict=True)
    ]
    return torch.stack(crops).permute(0, 2, 3, 1).contiguous()


def _decode_or_none(tensor: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _on_cpu(jpeg: bytes, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """The CPU path for a file the device decoder refuses: 3×crop×crop uint8 on `device`."""
    return torch.tensor(preprocess.from_jpeg(jpeg)).permute(2, 0, 1).to(device)


def _resize_crop(image: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """3×H×W uint8 -> 3×crop×crop uint8, with `Preprocess`'s sizes and rounding."""
    image = _as_jpeg_draft(image, preprocess.resize)
    _, h, w = image.shape
    crop = preprocess.crop
    scale = preprocess.resize / min(w, h)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    resized = F.interpolate(image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    image = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return image[:, top : top + crop, left : left + crop]


def _as_jpeg_draft(image: torch.Tensor, resize: int) -> torch.Tensor:
    """What PIL's JPEG draft mode (used by `Preprocess.from_jpeg`) does before the resize: decode at
    1/2, 1/4 or 1/8 scale, the smallest still at least `resize` on both sides. A DCT-domain downscale
    averages each s×s block, so an s×s mean pool (edges replicated to whole blocks) stands in for it."""
    _, h, w = image.shape
    factor = min(w // resize, h // resize)
    s = next((s for s in (8, 4, 2) if factor >= s), 1)
    if s == 1:
        return image
    padded = F.pad(image[None].float(), (0, -w % s, 0, -h % s), mode="replicate")
    return F.avg_pool2d(padded, s)[0].round_().clamp_(0, 255).to(torch.uint8)
