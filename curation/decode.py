"""Defensive image decoding: every input either becomes a clean RGB JPEG or a named rejection.

Crawled files lie about what they are. This module opens bytes without trusting the extension,
checks the pixel count from the header *before* decoding (a decompression bomb is a few KB on
disk and gigabytes in memory), decodes fully (a truncated JPEG only fails at the end), applies
the EXIF orientation, and normalises mode (CMYK, 16-bit, palette, alpha) to 8-bit RGB.

A clean baseline RGB JPEG with no rotation is kept byte for byte (no generational loss, and
ingest stays as fast as a bare decode); everything else is re-encoded with fixed settings, so
the same input always gives the same output bytes.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import signal
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection

from PIL import Image, ImageOps, UnidentifiedImageError

from foundation.images import to_rgb

# Quarantine reasons: the fault in the input, in words a person searching the logs would use.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_SMALL = "too_small"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
CRASHED_DECODER = "crashed_decoder"

EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodeLimits:
    """What an acceptable image is: at most `max_pixels` pixels, each side at least `min_side`."""

    max_pixels: int = 50_000_000
    min_side: int = 32
    jpeg_quality: int = 95


@dataclass(frozen=True)
class CleanImage:
    """A decoded, normalised image ready for a shard: JPEG bytes plus facts for the index."""

    jpeg: bytes
    width: int
    height: int
    original_format: str
    original_mode: str
    reencoded: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.jpeg).hexdigest()


@dataclass(frozen=True)
class Rejection:
    """Why an input cannot be used: a reason from the list above and a human-readable detail."""

    reason: str
    detail: str


def clean_image(data: bytes, limits: DecodeLimits) -> CleanImage | Rejection:
    """Decode `data` defensively; return the normalised image or the reason it was rejected.

    Never raises for a bad input: whatever the image library throws while opening, decoding,
    rotating or re-encoding (Pillow raises OSError, ValueError, SyntaxError, struct.error,
    EOFError, MemoryError … depending on the format) is the input's fault, so it becomes a
    rejection that names the exception, and the shard goes on.
    """
    if not data:
        return Rejection(EMPTY, "zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns on every oddity of a crawled file; its fate says enough
        try:
            return _decode(data, limits)
        except Image.DecompressionBombError as exc:
            return Rejection(DECOMPRESSION_BOMB, str(exc))
        except UnidentifiedImageError:
            return Rejection(NOT_AN_IMAGE, f"not a recognised image format (starts with {data[:16]!r})")
        except Exception as exc:  # any failure of the image library on one input is that input's fault
            return Rejection(_reason_for(exc), f"{type(exc).__name__}: {exc}")


def _decode(data: bytes, limits: DecodeLimits) -> CleanImage | Rejection:
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > limits.max_pixels:
        return Rejection(
            DECOMPRESSION_BOMB, f"{width}x{height} = {width * height} pixels > max_pixels {limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        return Rejection(TOO_SMALL, f"{width}x{height} has a side below min_side {limits.min_side}")
    image.load()
    return _normalise(image, data, limits)


TRUNCATION_MESSAGES = ("truncated", "broken data stream", "truncated file read", "premature end")


def _reason_for(exc: Exception) -> str:
    """`truncated` when the library says the data ended early, else `corrupt`."""
    message = str(exc).lower()
    if isinstance(exc, EOFError) or any(m in message for m in TRUNCATION_MESSAGES):
        return TRUNCATED
    return CORRUPT


def _normalise(image: Image.Image, data: bytes, limits: DecodeLimits) -> CleanImage:
    original_format, original_mode = image.format or "unknown", image.mode
    rotated = image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    if original_format == "JPEG" and original_mode == "RGB" and not rotated:
        return CleanImage(data, image.width, image.height, original_format, original_mode, reencoded=False)
    rgb = to_rgb(ImageOps.exif_transpose(image) if rotated else image)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=limits.jpeg_quality, optimize=False)
    return CleanImage(buffer.getvalue(), rgb.width, rgb.height, original_format, original_mode, reencoded=True)


def clean_image_isolated(data: bytes, limits: DecodeLimits) -> CleanImage | Rejection:
    """`clean_image` in a child process of its own: an input that kills its decoder (a segfault in
    a native library, the OOM killer) becomes a `crashed_decoder` rejection instead of killing us.

    Ingest only takes this path for the shards whose worker died twice, so a fork per input is
    cheap where it is spent.
    """
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.Process(target=_clean_into, args=(sender, data, limits), daemon=True)
    child.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:  # the child died before it could answer
        result = None
    child.join()
    if result is None:
        return Rejection(CRASHED_DECODER, f"the decoder process died on this input ({_exit_cause(child.exitcode)})")
    return result


def _clean_into(sender: Connection, data: bytes, limits: DecodeLimits) -> None:
    sender.send(clean_image(data, limits))
    sender.close()


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"
