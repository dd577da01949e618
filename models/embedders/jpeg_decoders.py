"""Which library decodes JPEG batches for `device_decode`: torchvision while it still ships its
decoder, else TorchCodec.

torchvision deprecated its image decoders in 0.29 in favour of TorchCodec, whose image decoders
start at 0.16 and load with torch 2.11 or newer. Both wrap libjpeg on the CPU and batched nvjpeg
on a GPU, raise `RuntimeError` on a file they refuse (tested on the CPU) and host-synchronise
before returning, so `device_decode` guards them alike. torchvision's comes first because its GPU
path is the one measured in this project (TorchCodec's has not run on a GPU here); TorchCodec
keeps the embed stage decoding once torchvision drops its decoders.

One difference: TorchCodec always applies a file's EXIF orientation, torchvision never does (nor
does `Preprocess.from_jpeg`). Ingest re-encodes every file tagged with another orientation than
upright (`curation.decode`), so the two give identical pixels on every file ingest writes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from foundation.errors import ConfigError

DecodeFn = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@dataclass(frozen=True)
class JpegDecoder:
    """`decode(files, device)`: 1-D uint8 CPU tensors of JPEG files -> 3×H×W uint8 RGB on `device`."""

    name: str
    decode: DecodeFn


def torchvision_decoder() -> JpegDecoder | None:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a torchvision that no longer ships its image decoders
        return None
    return JpegDecoder("torchvision", lambda data, device: decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def torchcodec_decoder() -> JpegDecoder | None:
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, OSError):  # not installed, or its library needs a newer torch (OSError)
        return None
    return JpegDecoder("torchcodec", lambda data, device: decode_jpeg(data, mode="RGB", device=device))


DECODERS: dict[str, Callable[[], JpegDecoder | None]] = {
    "torchvision": torchvision_decoder,
    "torchcodec": torchcodec_decoder,
}


@functools.cache
def jpeg_decoder() -> JpegDecoder:
    """The first of `DECODERS` this install can load."""
    for load in DECODERS.values():
        if (decoder := load()) is not None:
            return decoder
    raise ConfigError(
        "no JPEG decoder for embed.decode=device: install torchcodec>=0.16 (with torch>=2.11), "
        "or a torchvision that still ships decode_jpeg, or set embed.decode=cpu"
    )
