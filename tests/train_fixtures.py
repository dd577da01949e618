"""Shared pieces for trainer tests: tiny curated shards and a tiny model config."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from curation.shards import ShardWriter
from curation.synth.concepts import PROCEDURAL


def write_concept_shards(out: Path, images: int = 48, per_shard: int = 16, seed: int = 0) -> Path:
    """WebDataset shards of procedural concept images, as `curated/` holds them."""
    rng = np.random.default_rng(seed)
    concepts = sorted(PROCEDURAL)
    out.mkdir(parents=True, exist_ok=True)
    writer = None
    for i in range(images):
        if i % per_shard == 0:
            if writer:
                writer.close()
            writer = ShardWriter(out / f"{i // per_shard:06d}.tar")
        image = PROCEDURAL[concepts[i % len(concepts)]](rng, (96, 96))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        writer.write(f"{i:08d}", {"jpg": buffer.getvalue(), "json": b"{}"})
    writer.close()
    return out


def tiny_train_tree(shards: Path, output_dir: Path, **sections: dict) -> dict:
    """A config tree for a 2-block, 32-wide ViT on 32/16-pixel crops: a step takes milliseconds."""
    tree = {
        "run": {"output_dir": str(output_dir), "log_every": 1, "checkpoint_every": 2},
        "data": {"shards": str(shards), "batch_size_per_gpu": 4, "workers": 0, "shuffle_buffer": 8},
        "model": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "drop_path_rate": 0.1},
        "dino_head": {"prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16},
        "ibot_head": {"prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16},
        "optim": {"epochs": 2, "epoch_length": 4, "warmup_epochs": 1},
        "teacher": {"warmup_temp_epochs": 1},
        "crops": {"global_size": 32, "local_size": 16, "local_number": 2},
    }
    for name, values in sections.items():
        tree[name] = {**tree.get(name, {}), **values}
    return tree
