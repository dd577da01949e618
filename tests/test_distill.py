"""Distillation on tiny shards: the teacher stays bit-identical, the student's EMA is exported, bad teachers fail."""

from __future__ import annotations

import hashlib

import pytest
import torch

from foundation.config import validate_tree
from foundation.errors import ConfigError
from models.checkpoint import CheckpointError
from models.embedders import create_embedder
from tests.train_fixtures import tiny_train_tree, write_concept_shards
from training.config import TrainConfig
from training.distill import DistillConfig, build_teacher, distill, teacher_overrides
from training.train_loop import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_concept_shards(tmp_path_factory.mktemp("curated"))


@pytest.fixture(scope="module")
def teacher_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(validate_tree(TrainConfig, tiny_train_tree(shards, out, run={"max_steps": 2}), "teacher"))
    return out


def _student(shards, out, teacher: dict, **sections) -> DistillConfig:
    sections = {"run": {"max_steps": 3}, **sections}
    sections["model"] = {"embed_dim": 16, "depth": 1, **sections.get("model", {})}
    tree = tiny_train_tree(shards, out, **sections)
    tree["distill"] = {"teacher": teacher}
    return validate_tree(DistillConfig, tree, "student")


def _digest(directory):
    return {
        p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_distillation_leaves_the_teacher_bit_identical_and_exports_the_student(shards, teacher_run, tmp_path):
    before = _digest(teacher_run)
    config = _student(shards, tmp_path, {"run_dir": str(teacher_run)})
    teacher = build_teacher(config)
    weights_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = distill(config)
    assert result.steps == 3
    assert _digest(teacher_run) == before
    # A fresh load gives the same teacher the run started from, and the run itself did not move it.
    for name, value in build_teacher(config).state_dict().items():
        assert torch.equal(value, weights_before[name]), name
    student = create_embedder(f"lvd:{tmp_path / 'export'}")
    assert student.dim == 16  # the student's EMA is exported, not the 32-wide teacher


def test_a_backbone_only_teacher_gets_frozen_fresh_heads(shards, teacher_run, tmp_path):
    config = _student(shards, tmp_path, {"backbone": f"lvd:{teacher_run / 'export'}"})
    teacher = build_teacher(config)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert distill(config).steps == 3


def test_teacher_and_student_must_agree_on_patches_and_prototypes(shards, teacher_run, tmp_path):
    with pytest.raises(ConfigError, match=r"dino_head\.prototypes"):
        build_teacher(_student(shards, tmp_path, {"run_dir": str(teacher_run)}, dino_head={"prototypes": 32}))
    with pytest.raises(ConfigError, match=r"model\.patch_size"):
        build_teacher(_student(shards, tmp_path, {"run_dir": str(teacher_run)}, model={"patch_size": 16}))


def test_missing_or_wrong_teachers_are_one_line_errors(shards, tmp_path):
    with pytest.raises(CheckpointError, match="not a finished training run"):
        build_teacher(_student(shards, tmp_path, {"run_dir": str(tmp_path)}))
    with pytest.raises(CheckpointError, match=r"needs distill\.teacher\.weights"):
        build_teacher(_student(shards, tmp_path, {"backbone": "dinov2:vits14"}))
    with pytest.raises(ConfigError, match="exactly one of run_dir or backbone"):
        _student(shards, tmp_path, {})
    with pytest.raises(ConfigError, match="expected a training run"):
        teacher_overrides(tmp_path)
