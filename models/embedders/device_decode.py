"""JPEG decoding and preprocessing where the model runs: nvjpeg on a GPU, so an embed actor needs
no CPU cores to keep a ViT-H fed (PIL decodes a few hundred web images per second per core; a
GPU embeds over a thousand).

The output matches `Preprocess` (shorter side resized bicubic with antialiasing, centre crop,
uint8 HWC) closely enough that embeddings agree to cosine >= 0.999 with the CPU path; the tests
run this same code with `device="cpu"`. Ingest guarantees every pool and reference image is an
RGB JPEG; one the decoder still refuses goes through `Preprocess.from_jpeg` on the CPU instead
of failing its batch.

The decoding library is torchvision's or TorchCodec's (`jpeg_decoders`). On a GPU both need one
guard (`_decode`): nvjpeg's output is allocated on the caller's stream but written by hardware
that waits for nothing queued there, so it can overwrite memory the caller's kernels still read.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from models.embedders.base import Preprocess
from models.embedders.jpeg_decoders import JpegDecoder, jpeg_decoder

# On a GPU, images of one size are resized together, a few dozen at a time: one kernel launch per
# group instead of one per image keeps the decode thread's host time (and its hold on the GIL, which
# the model's thread needs to launch its own kernels) low. A group's float copy is capped at about
# 0.5 GB (`GROUP_PIXELS`), so 12-megapixel photos go three at a time and web-size images 32.
# On a CPU the arithmetic dominates and one image at a time stays in cache: grouping was slower.
GPU_GROUP = 32
GROUP_PIXELS = 40_000_000
# nvjpeg has no draft mode: it decodes every image at full size. Ingest keeps images up to 50 MP, so
# a batch of 256 photos could decode to tens of GB; a batch is decoded a part of at most
# `DECODE_BYTES` at a time (256 web-size images are about 150 MB, one part; 12 MP photos go 29 at a time).
DECODE_BYTES = 1 << 30


class UndecodableJpeg(ValueError):
    """A file of the batch that neither the device's decoder nor PIL can read (its cause chained)."""

    def __init__(self, index: int):
        super().__init__(f"file {index} of the batch cannot be decoded")
        self.index = index


def decode_batch(
    jpegs: list[bytes],
    preprocess: Preprocess,
    device: torch.device,
    group: int | None = None,
    decoder: JpegDecoder | None = None,
) -> torch.Tensor:
    """B×crop×crop×3 uint8 on `device` from B JPEG files, resized `group` same-size images at a time
    (default: `GPU_GROUP` on a GPU, 1 elsewhere), decoded by `decoder` (default: `jpeg_decoder()`).
    A file nothing can decode raises `UndecodableJpeg`."""
    group = group or (GPU_GROUP if device.type == "cuda" else 1)
    decoder = decoder or jpeg_decoder()
    crops = torch.empty((len(jpegs), 3, preprocess.crop, preprocess.crop), dtype=torch.uint8, device=device)
    for part in _parts(jpegs):
        _decode_into(
            crops[part.start : part.stop], jpegs[part.start : part.stop], part.start, preprocess, group, decoder
        )
    return crops.permute(0, 2, 3, 1).contiguous()


def _parts(jpegs: list[bytes]) -> Iterator[range]:
    """Consecutive runs of `jpegs` that decode to at most `DECODE_BYTES` (or to one larger image)."""
    start, size = 0, 0
    for index, jpeg in enumerate(jpegs):
        decoded = _decoded_bytes(jpeg)
        if index > start and size + decoded > DECODE_BYTES:
            yield range(start, index)
            start, size = index, 0
        size += decoded
    if start < len(jpegs):
        yield range(start, len(jpegs))


def _decoded_bytes(jpeg: bytes) -> int:
    """The RGB bytes `jpeg` decodes to, read from its header; 0 for a file without a readable one,
    which the decoder refuses and the CPU path decodes (at draft size) instead."""
    try:
        width, height = Image.open(io.BytesIO(jpeg)).size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0
    return 3 * width * height


def _decode_into(
    crops: torch.Tensor, jpegs: list[bytes], first: int, preprocess: Preprocess, group: int, decoder: JpegDecoder
) -> None:
    """Fill `crops` (N×3×crop×crop uint8) from N JPEG files, the batch's from index `first` on: one
    batched decode, then a resize per `group` same-size images; a file the decoder refuses goes
    through the CPU path."""
    device = crops.device
    data = [_as_tensor(jpeg) for jpeg in jpegs]
    try:
        images = _decode(data, device, decoder)
    except RuntimeError:  # one bad file fails the batched call: decode one by one to find it
        images = [_decode_or_none(tensor, device, decoder) for tensor in data]
    for index in (i for i, image in enumerate(images) if image is None):
        try:
            crops[index] = _on_cpu(jpegs[index], preprocess, device)
        except Exception as exc:  # any failure of the image library is this file's
            raise UndecodableJpeg(first + index) from exc
    for (_, h, w), indices in _by_size(images).items():
        step = max(1, min(group, GROUP_PIXELS // (h * w)))
        for start in range(0, len(indices), step):
            chosen = indices[start : start + step]
            _put(crops, chosen, _resize_crop(torch.stack([images[i] for i in chosen]), preprocess))


def _as_tensor(jpeg: bytes) -> torch.Tensor:
    """The file's bytes as a uint8 tensor for the decoder (torch.frombuffer refuses an empty one)."""
    return torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) if jpeg else torch.empty(0, dtype=torch.uint8)


def _put(crops: torch.Tensor, indices: list[int], batch: torch.Tensor) -> None:
    """`crops[indices] = batch` without stalling the host: an index list would go to the GPU in a
    blocking copy that waits for every decode kernel queued before it."""
    if len(indices) == 1:
        crops[indices[0]] = batch[0]
        return
    index = torch.tensor(indices)
    if crops.is_cuda:
        index = index.pin_memory().to(crops.device, non_blocking=True)
    crops.index_copy_(0, index, batch)


def _by_size(images: list[torch.Tensor | None]) -> dict[tuple[int, ...], list[int]]:
    """Indices of the decoded images of each shape (the files the decoder refused are left out)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        if image is not None:
            groups.setdefault(tuple(image.shape), []).append(index)
    return groups


def _decode_or_none(tensor: torch.Tensor, device: torch.device, decoder: JpegDecoder) -> torch.Tensor | None:
    try:
        return _decode([tensor], device, decoder)[0]
    except RuntimeError:
        return None


def _decode(data: list[torch.Tensor], device: torch.device, decoder: JpegDecoder) -> list[torch.Tensor]:
    """`decoder`'s batch decode, with its outputs in memory no queued kernel still reads.

    On a GPU both libraries allocate each output on the current stream. torchvision then has nvjpeg
    write it from a pool stream that does not wait for the current one, and nvjpeg's hardware engine
    does not wait for the stream it is given either (pytorch/vision#9606, meta-pytorch/torchcodec#1634).
    The caching allocator hands out a block as soon as it is freed on its stream, so on the decode
    stream, with the last batch's resize still queued, nvjpeg would be given (and overwrite) memory
    that resize has yet to read. So the outputs are allocated on a stream that never runs a kernel,
    whose free blocks are truly free, and each is marked as used by the caller's stream, so its block
    is not handed to nvjpeg again before the caller's kernels are done with it. Both libraries wait
    for the decode to finish before they return, so the pixels are there for any stream to read.
    """
    if device.type != "cuda":
        return decoder.decode(data, device)
    caller = torch.cuda.current_stream(device)
    with torch.cuda.stream(_idle_stream(caller.device)):
        images = decoder.decode(data, device)
    for image in images:
        image.record_stream(caller)
    return images


@functools.cache
def _idle_stream(device: torch.device) -> torch.cuda.Stream:
    """A stream of `device` on which no kernel is ever queued: only nvjpeg's outputs are allocated on it."""
    return torch.cuda.Stream(device)


def _on_cpu(jpeg: bytes, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """The CPU path for a file the device decoder refuses: 3×crop×crop uint8 on `device`."""
    return torch.tensor(preprocess.from_jpeg(jpeg)).permute(2, 0, 1).to(device)


def _resize_crop(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """B×3×H×W uint8 -> B×3×crop×crop uint8, with `Preprocess`'s sizes and rounding."""
    images = _as_jpeg_draft(images, preprocess.resize)
    h, w = images.shape[-2:]
    crop = preprocess.crop
    scale = preprocess.resize / min(w, h)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    resized = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    images = resized.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def _as_jpeg_draft(images: torch.Tensor, resize: int) -> torch.Tensor:
    """What PIL's JPEG draft mode (used by `Preprocess.from_jpeg`) does before the resize: decode at
    1/2, 1/4 or 1/8 scale, the smallest still at least `resize` on both sides. A DCT-domain downscale
    averages each s×s block, so an s×s mean pool (edges replicated to whole blocks) stands in for it."""
    h, w = images.shape[-2:]
    factor = min(w // resize, h // resize)
    s = next((s for s in (8, 4, 2) if factor >= s), 1)
    if s == 1:
        return images
    padded = F.pad(images.float(), (0, -w % s, 0, -h % s), mode="replicate")
    return F.avg_pool2d(padded, s).round_().clamp_(0, 255).to(torch.uint8)
