"""Decontamination against evaluation sets (relative dedup, DINOv2 paper App. A.3).

This module currently holds the configuration contract: which evaluation sets a run protects
and the cosine threshold. The search itself builds on the embed and dedup stages.
"""

from __future__ import annotations

from pydantic import Field

from curation.config import ConfigPath, Section


class EvalSet(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: ConfigPath = Field(description="the evaluation images (train and test splits): a folder or tar shards")


class DecontamConfig(Section):
    eval_sets: list[EvalSet] = Field(default_factory=list)
    threshold: float = Field(0.45, gt=0, le=1, description="pool images at cosine >= this to an eval image are dropped")
