"""Name -> embedder builders, one door (`create_embedder`) and a listing (`list_embedders`), as timm does.

Names are `kind` or `kind:argument`: `tiny`, `timm:vit_huge_patch14_224`, `dinov2:vitl14_reg`,
`torchscript:/models/sscd_disc_mixup.torchscript.pt`. Weights only ever come from a local path the
user gives (or `"random"`, an explicit random initialisation for benchmarks and tests); nothing is
downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from foundation.errors import ConfigError
from models.embedders.base import Embedder, Preprocess

Built = tuple[nn.Module, int, Preprocess]
Builder = Callable[[str, "str | Path | None"], Built]

_BUILDERS: dict[str, Builder] = {}
_EXAMPLES: dict[str, list[str]] = {}


def register_embedder(kind: str, examples: list[str]) -> Callable[[Builder], Builder]:
    """Register `builder(argument, weights) -> (model, dim, preprocess)` under `kind`."""

    def decorate(builder: Builder) -> Builder:
        _BUILDERS[kind] = builder
        _EXAMPLES[kind] = examples
        return builder

    return decorate


def list_embedders() -> list[str]:
    """Every registered kind with example names (`timm:` accepts any timm architecture)."""
    return [name for kind in sorted(_BUILDERS) for name in _EXAMPLES[kind]]


def create_embedder(
    name: str,
    weights: str | Path | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    preprocess: Preprocess | None = None,
) -> Embedder:
    """Build the embedder `name`, load `weights`, and wrap it with its preprocessing."""
    kind, _, argument = name.partition(":")
    if kind not in _BUILDERS:
        raise ConfigError(f"unknown embedder {name!r}; registered: {', '.join(list_embedders())}")
    model, dim, default_preprocess = _BUILDERS[kind](argument, weights)
    return Embedder(name, model, dim, preprocess or default_preprocess, device=device, precision=precision)
