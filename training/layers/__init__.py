"""Building blocks of the DINOv2 vision transformer, one small module each (as in dinov2/layers)."""

from training.layers.attention import Attention
from training.layers.block import Block
from training.layers.drop_path import DropPath
from training.layers.layer_scale import LayerScale
from training.layers.mlp import Mlp, SwiGLUFFNFused
from training.layers.patch_embed import PatchEmbed

__all__ = ["Attention", "Block", "DropPath", "LayerScale", "Mlp", "PatchEmbed", "SwiGLUFFNFused"]
