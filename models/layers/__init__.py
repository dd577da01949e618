"""Building blocks of the DINOv2 vision transformer, one small module each (as in dinov2/layers)."""

from models.layers.attention import Attention
from models.layers.block import Block
from models.layers.drop_path import DropPath
from models.layers.layer_scale import LayerScale
from models.layers.mlp import Mlp, SwiGLUFFNFused
from models.layers.patch_embed import PatchEmbed

__all__ = ["Attention", "Block", "DropPath", "LayerScale", "Mlp", "PatchEmbed", "SwiGLUFFNFused"]
