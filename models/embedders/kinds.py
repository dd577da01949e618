"""The registered embedder kinds: tiny, timm, dinov2 and torchscript."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.storage import location, open_input
from models.backbones import load_backbone
from models.checkpoint import RANDOM_WEIGHTS, CheckpointError, load_strict
from models.embedders.base import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from models.embedders.registry import Built, register_embedder
from models.embedders.tiny import PREPROCESS as TINY_PREPROCESS
from models.embedders.tiny import TinyEmbedder


def _load_weights(model: nn.Module, name: str, weights: str | Path | None) -> nn.Module:
    if weights is None:
        raise CheckpointError(
            f"embedder {name!r} needs weights: a local checkpoint path (or weights='random' for a benchmark)"
        )
    if str(weights) == RANDOM_WEIGHTS:
        return model
    return load_strict(model, weights)


@register_embedder("tiny", ["tiny", "tiny:semantic"])
def build_tiny(argument: str, weights: str | Path | None) -> Built:
    """Weight-free and deterministic; for tests and the demo (see models.embedders.tiny)."""
    if argument not in ("", "semantic") or weights not in (None, RANDOM_WEIGHTS):
        raise ConfigError("embedder 'tiny' takes no weights and only the argument 'semantic'")
    return TinyEmbedder(semantic=argument == "semantic"), TinyEmbedder.dim, TINY_PREPROCESS


@register_embedder("timm", ["timm:<architecture>"])
def build_timm(argument: str, weights: str | Path | None) -> Built:
    """Any timm architecture with a local checkpoint; preprocessing from the model's pretrained config."""
    import timm
    from timm.data import resolve_data_config

    if argument not in timm.list_models():
        raise ConfigError(f"timm has no architecture {argument!r}; see timm.list_models()")
    model = _load_weights(timm.create_model(argument, pretrained=False, num_classes=0), f"timm:{argument}", weights)
    data = resolve_data_config({}, model=model)
    crop = data["input_size"][-1]
    preprocess = Preprocess(round(crop / data["crop_pct"]), crop, tuple(data["mean"]), tuple(data["std"]))
    return model, model.num_features, preprocess


@register_embedder("dinov2", [f"dinov2:{a}{r}" for a in ("vits14", "vitb14", "vitl14", "vitg14") for r in ("", "_reg")])
def build_dinov2(argument: str, weights: str | Path | None) -> Built:
    """An official DINOv2 backbone checkpoint (torch.hub layout); the feature is the normalised CLS token."""
    model = load_backbone(f"dinov2:{argument}", weights)
    return model, model.embed_dim, Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)


@register_embedder("torchscript", ["torchscript:<path>"])
def build_torchscript(argument: str, weights: str | Path | None) -> Built:
    """A TorchScript file, e.g. SSCD copy detection (which expects 288-pixel inputs, ImageNet mean/std)."""
    path = location(argument or str(weights or ""))
    if not path.is_file():
        raise CheckpointError(f"TorchScript model {path} does not exist; give torchscript:<path or storage URL>")
    try:
        with warnings.catch_warnings(), open_input(path) as handle:  # TorchScript is deprecated, but SSCD ships so
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(handle, map_location="cpu")
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not a TorchScript model: {str(exc).splitlines()[0]}") from None
    preprocess = Preprocess(288, 288, IMAGENET_MEAN, IMAGENET_STD)
    with torch.inference_mode():
        dim = model.eval()(torch.zeros(1, 3, preprocess.crop, preprocess.crop)).shape[-1]
    return model, int(dim), preprocess


@register_embedder("lvd", ["lvd:<export dir>"])
def build_lvd(argument: str, weights: str | Path | None) -> Built:
    """A backbone exported by `lvd train`/`lvd distill` (see models.backbones); `weights` overrides its
    .pth, and `weights='random'` gives the same architecture at random init."""
    model = load_backbone(f"lvd:{argument}", weights)
    crop = model.spec["img_size"]
    return model, model.embed_dim, Preprocess(round(crop * 256 / 224), crop, IMAGENET_MEAN, IMAGENET_STD)
