"""The one interface every backbone sits behind: uint8 images in, L2-normalised float32 vectors out.

An `Embedder` pairs a model with the preprocessing it was trained with (`Preprocess`: shorter
side resized, centre crop, mean/std). Preprocessing is split from the forward pass on purpose:
`Preprocess` runs in CPU tasks and ships compact uint8 crops; `Embedder.__call__` runs where the
model is (an actor, a GPU) and does the float conversion, normalisation and forward there.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from foundation.images import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `resize` (bicubic), centre-crop `crop`×`crop`, keep uint8 HWC.

    The crop comes back writable: `np.asarray` of a PIL image is a read-only view of its bytes, and
    torch warns on `from_numpy`/`as_tensor` of one. The extra copy costs about 1 µs of the ~30 µs crop.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        scale = self.resize / min(w, h)
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        image = to_rgb(image).resize(size, Image.BICUBIC)
        left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        return np.array(image.crop((left, top, left + self.crop, top + self.crop)), dtype=np.uint8)

    def from_jpeg(self, data: bytes) -> np.ndarray:
        """Decode and preprocess; JPEG draft mode decodes at the smallest scale still >= `resize`."""
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (self.resize, self.resize))
        return self(image)


class Embedder:
    """A model plus its preprocessing; call it on a B×H×W×3 uint8 batch to get B×D unit vectors.

    `precision` is the autocast dtype on CUDA (`fp16`/`bf16`); on CPU the forward runs in fp32.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        dim: int,
        preprocess: Preprocess,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        self.name, self.dim, self.preprocess = name, dim, preprocess
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._mean = torch.tensor(preprocess.mean, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(preprocess.std, device=self.device).view(1, 3, 1, 1) * 255

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.on_device(images).cpu()

    @torch.inference_mode()
    def on_device(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The unit vectors left where the model ran: on a GPU the call returns once the forward is
        queued, so a caller can queue the next batch before it waits for this one's vectors."""
        pixels = torch.as_tensor(images)
        if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != torch.uint8:
            raise ValueError(f"{self.name}: expected a B×H×W×3 uint8 batch, got {tuple(pixels.shape)} {pixels.dtype}")
        # Compare types: a batch decoded on the device is on "cuda:0", while `self.device` may be
        # "cuda", and the two devices compare unequal (pinning a CUDA tensor would then fail).
        if pixels.device.type != self.device.type:
            pixels = pixels.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else pixels
        x = (pixels.permute(0, 3, 1, 2).float() - self._mean) / self._std
        use_amp = self.amp_dtype is not None and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=use_amp):
            features = self.model(x)
        return F.normalize(features.float(), dim=-1)
