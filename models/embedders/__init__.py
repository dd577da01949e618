"""Embedders: every backbone behind one call (uint8 batch in, L2-normalised float32 out).

from models.embedders import create_embedder, list_embedders
embedder = create_embedder("dinov2:vitl14", weights="dinov2_vitl14_pretrain.pth")
vectors = embedder(np.stack([embedder.preprocess(image) for image in images]))
"""

from models.checkpoint import CheckpointError
from models.embedders import kinds as _kinds  # noqa: F401 (registers the built-in kinds)
from models.embedders.base import Embedder, Preprocess
from models.embedders.registry import create_embedder, list_embedders, register_embedder

__all__ = ["CheckpointError", "Embedder", "Preprocess", "create_embedder", "list_embedders", "register_embedder"]
