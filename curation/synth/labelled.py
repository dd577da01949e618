"""A labelled image folder of the procedural synthetic concepts, for kNN and linear-probe evaluation.

    OUT/train/<concept>/NNNN.jpg
    OUT/val/<concept>/NNNN.jpg

The images are fresh draws (their own seed), not crawl images, so evaluating a model trained on
a curated crawl measures what it learnt about the concepts, not what it memorised. The photo concepts are left out: each is crops of a single photo, which
run out after a few dozen distinct crops.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from curation.synth.concepts import PROCEDURAL
from curation.synth.crawl import jpeg


def make_labelled(out: str | Path, train_per_concept: int = 40, val_per_concept: int = 20, seed: int = 1) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_concept), ("val", val_per_concept)):
        for concept, render in sorted(PROCEDURAL.items()):
            for i in range(count):
                image = render(rng, (int(rng.integers(192, 321)), int(rng.integers(192, 321))))
                path = out / split / concept / f"{i:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg(image))
    return out
