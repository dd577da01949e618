"""The DINOv2 vision transformer (Oquab et al. 2023), with the official checkpoint's parameter names.

State-dict keys match the `torch.hub` DINOv2 backbones (`patch_embed.proj`, `cls_token`,
`pos_embed`, `register_tokens`, `mask_token`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,
norm2,mlp.*,ls2.gamma}`, `norm`), so official `dinov2_vit*14[_reg]_pretrain.pth` files load with
`strict=True` and this model's exports load into DINOv2 code. Position embeddings are stored for
the 518-pixel pretraining resolution (37×37 patches) and interpolated to the input size.

`create_vit("vits14_reg")` is the one door; `VIT_ARCHS` lists what exists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import Block, PatchEmbed


@dataclass(frozen=True)
class ViTArch:
    embed_dim: int
    depth: int
    num_heads: int
    ffn_layer: str = "mlp"


VIT_ARCHS = {
    "vits14": ViTArch(384, 12, 6),
    "vitb14": ViTArch(768, 12, 12),
    "vitl14": ViTArch(1024, 24, 16),
    "vitg14": ViTArch(1536, 40, 24, "swiglufused"),
}


class DinoVisionTransformer(nn.Module):
    """ViT with patch 14, LayerScale, optional register tokens and iBOT mask token.

    `forward_features` returns the normalised CLS token (B×D), register tokens (B×R×D) and patch
    tokens (B×N×D), `forward_features_list` the same for several crop sizes at once; `forward`
    returns the CLS token, the feature DINOv2 reports for kNN/linear.
    """

    def __init__(
        self,
        arch: ViTArch,
        patch_size: int = 14,
        img_size: int = 518,
        num_register_tokens: int = 0,
        init_values: float = 1.0,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
    ):
        super().__init__()
        self.spec = {
            "arch": asdict(arch),
            "patch_size": patch_size,
            "img_size": img_size,
            "num_register_tokens": num_register_tokens,
            "interpolate_antialias": interpolate_antialias,
            "interpolate_offset": interpolate_offset,
        }
        dim = arch.embed_dim
        self.embed_dim, self.patch_size = dim, patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias, self.interpolate_offset = interpolate_antialias, interpolate_offset
        self.patch_embed = PatchEmbed(patch_size, 3, dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        # DINOv2 drops every block at the same rate; timm's ViTs ramp it up linearly from 0.
        rates = (
            [drop_path_rate] * arch.depth
            if drop_path_uniform
            else torch.linspace(0, drop_path_rate, arch.depth).tolist()
        )
        self.blocks = nn.ModuleList(
            Block(dim, arch.num_heads, 4.0, init_values, rate, arch.ffn_layer) for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()
        self.activation_checkpointing = False  # training sets it: blocks recompute in backward
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, num_tokens: int, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an input of `height`×`width` pixels (bicubic, as DINOv2 does it)."""
        stored = self.pos_embed.shape[1] - 1
        if num_tokens - 1 == stored and height == width:
            return self.pos_embed
        pos = self.pos_embed.float()
        side = int(math.sqrt(stored))
        h0, w0 = height // self.patch_size, width // self.patch_size
        if self.interpolate_offset:
            size_kw = {"scale_factor": ((h0 + self.interpolate_offset) / side, (w0 + self.interpolate_offset) / side)}
        else:
            size_kw = {"size": (h0, w0)}
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **size_kw)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens (masked ones replaced by `mask_token`), CLS, positions, then registers."""
        _, _, height, width = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1], height, width)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return x

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_features_list([x], [masks])[0]

    def forward_features_list(
        self, xs: list[torch.Tensor], masks: list[torch.Tensor | None]
    ) -> list[dict[str, torch.Tensor]]:
        """`forward_features` of batches of images whose sizes differ (a student's global and local
        crops) in one pass, as DINOv2 does: every block runs once over all their tokens."""
        tokens = [self.prepare_tokens(x, m) for x, m in zip(xs, masks, strict=True)]
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            tokens = checkpoint(block, tokens, use_reentrant=False) if recompute else block(tokens)
        r = self.num_register_tokens
        normed = [self.norm(x) for x in tokens]
        return [
            {"x_norm_clstoken": x[:, 0], "x_norm_regtokens": x[:, 1 : r + 1], "x_norm_patchtokens": x[:, r + 1 :]}
            for x in normed
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)["x_norm_clstoken"])


def vit_from_spec(spec: dict) -> DinoVisionTransformer:
    """Rebuild a backbone from its `spec` (as saved beside an export), for inference."""
    options = {k: v for k, v in spec.items() if k != "arch"}
    return DinoVisionTransformer(ViTArch(**spec["arch"]), **options)


def create_vit(name: str, **kwargs: object) -> DinoVisionTransformer:
    """`vits14`, `vitb14`, `vitl14`, `vitg14`, each optionally `_reg` (4 registers, as the hub models).

    Defaults follow the hub backbones: 518-pixel position grid, LayerScale init 1.0; the `_reg`
    variants interpolate positions with antialiasing and no offset, as the official code does.
    """
    base, _, suffix = name.partition("_")
    if base not in VIT_ARCHS or suffix not in ("", "reg"):
        raise ValueError(f"unknown ViT {name!r}; choose from {sorted(VIT_ARCHS)} with an optional '_reg'")
    options: dict[str, object] = {}
    if suffix == "reg":
        options.update(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)
    options.update(kwargs)
    return DinoVisionTransformer(VIT_ARCHS[base], **options)
