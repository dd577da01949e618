"""The one way to load a backbone: an official DINOv2 checkpoint or this project's export.

An export is a folder (local, `file://` or any fsspec URL) holding `backbone.json`, the ViT's
constructor arguments, and `teacher_backbone.pth`, its state dict in the official DINOv2 layout.
The embed stage, `lvd eval` and distillation all load through `load_backbone`, so a change to the
format changes one reader and one writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from foundation.errors import ConfigError
from foundation.storage import Location, location
from models.checkpoint import RANDOM_WEIGHTS, CheckpointError, load_strict
from models.vision_transformer import DinoVisionTransformer, create_vit, vit_from_spec

EXPORT_WEIGHTS = "teacher_backbone.pth"
EXPORT_SPEC = "backbone.json"


def load_backbone(name: str, weights: str | Location | None = None) -> DinoVisionTransformer:
    """`dinov2:<arch>[_reg]` with `weights` (a torch.hub-layout .pth), or `lvd:<export dir>` (its own
    weights unless `weights` overrides them); every key and shape must match."""
    kind, _, argument = name.partition(":")
    if kind == "lvd":
        directory = location(argument)
        spec_path = directory / EXPORT_SPEC
        if not spec_path.is_file():
            raise CheckpointError(f"{directory} is not a backbone export: {spec_path} is missing")
        model = vit_from_spec(json.loads(spec_path.read_text()))
        return _with_weights(model, name, weights or directory / EXPORT_WEIGHTS)
    if kind == "dinov2":
        try:
            model = create_vit(argument)
        except ValueError as exc:
            raise ConfigError(f"backbone {name!r}: {exc}") from None
        if weights is None:
            raise CheckpointError(
                f"{name!r} needs weights: a .pth checkpoint path or storage URL (or weights='random' for a baseline)"
            )
        return _with_weights(model, name, weights)
    raise ConfigError(f"a backbone is dinov2:<arch> or lvd:<export dir>, not {name!r}")


def _with_weights(model: DinoVisionTransformer, name: str, weights: str | Location) -> DinoVisionTransformer:
    if str(weights) == RANDOM_WEIGHTS:
        return model
    return load_strict(model, weights)


def write_export(state: dict[str, torch.Tensor], spec: dict, directory: Path) -> Path:
    """Write an export that `load_backbone("lvd:<directory>")` reads; returns the weights' path.

    The weights are renamed into place last, so a folder with them is a complete export."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / EXPORT_WEIGHTS
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    (directory / EXPORT_SPEC).write_text(json.dumps(spec, indent=2))
    tmp.replace(path)
    return path


def is_export(directory: Path) -> bool:
    return (directory / EXPORT_SPEC).is_file()
