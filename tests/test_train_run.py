"""The training loop end to end on tiny shards: metrics, checkpoints, resume, export, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from foundation.config import validate_tree
from foundation.errors import ConfigError
from models.embedders import create_embedder
from tests.train_fixtures import tiny_train_tree, write_concept_shards
from training.config import TrainConfig
from training.data import shard_urls, tar_samples
from training.student_teacher import DinoV2
from training.train_loop import FiniteWatch, TrainingDiverged, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_concept_shards(tmp_path_factory.mktemp("curated"))


def _config(shards, out, **sections) -> TrainConfig:
    return validate_tree(TrainConfig, tiny_train_tree(shards, out, **sections), "test")


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_metrics_checkpoints_and_a_loadable_export(shards, tmp_path):
    result = train(_config(shards, tmp_path, run={"max_steps": 4}))
    assert (result.steps, result.images_seen) == (4, 16)
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss/dino_global", "loss/dino_local", "loss/ibot", "loss/koleo", "lr", "momentum", "images_per_s"} <= set(
        rows[0]
    )
    assert rows[0]["last_layer_lr"] == 0.0  # prototypes frozen in the first epoch
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    embedder = create_embedder(f"lvd:{tmp_path / 'export'}")
    assert embedder.dim == 32 and embedder.preprocess.crop == 32


def test_killed_run_resumes_from_its_last_checkpoint(shards, tmp_path):
    train(_config(shards, tmp_path, run={"max_steps": 4, "keep_checkpoints": 5}))
    resumed = train(_config(shards, tmp_path, run={"max_steps": 6, "keep_checkpoints": 5}))
    assert (resumed.steps, resumed.images_seen) == (6, 24)
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    # A run killed after logging steps it had not checkpointed logs them again, once.
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 7, "loss/total": 0.0}) + "\n")
    # A checkpoint being written when the run died is ignored, not loaded.
    (tmp_path / "checkpoints" / "step_00000008.partial").mkdir()
    again = train(_config(shards, tmp_path, run={"max_steps": 8, "keep_checkpoints": 5}))
    assert again.steps == 8
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_resume_restores_teacher_student_and_optimiser_exactly(shards, tmp_path):
    config = _config(shards, tmp_path, run={"max_steps": 2})
    train(config)
    saved = torch.load(tmp_path / "export" / "teacher_backbone.pth", weights_only=True)
    model = DinoV2(config)
    from training.checkpoint import load_latest
    from training.optim import build_optimizer

    optimizer = build_optimizer(model.student, config)
    assert load_latest(tmp_path / "checkpoints", model, optimizer) == (2, 8)
    for name, value in model.teacher.backbone.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert optimizer.state  # AdamW moments came back too


def test_sinkhorn_and_separate_ibot_head_train(shards, tmp_path):
    result = train(
        _config(
            shards, tmp_path, run={"max_steps": 2}, loss={"centering": "sinkhorn_knopp", "separate_ibot_head": True}
        )
    )
    assert result.steps == 2 and result.final_loss == result.final_loss  # not NaN


def test_a_profiled_window_of_the_loop_says_where_its_steps_went(shards, tmp_path, capsys):
    train(_config(shards, tmp_path, run={"max_steps": 3, "profile_steps": [1, 3]}))
    line = [row for row in capsys.readouterr().out.splitlines() if row.startswith("profile:")]
    assert len(line) == 1 and line[0].startswith("profile: 2 steps, "), line
    table = (tmp_path / "profile.txt").read_text()
    assert "aten::addmm" in table or "aten::mm" in table  # the model's matmuls, on the real loop
    assert json.loads((tmp_path / "profile_trace.json").read_text())["traceEvents"]
    with pytest.raises(ConfigError, match="profile_steps must be"):
        _config(shards, tmp_path, run={"profile_steps": [3, 3]})


def test_a_diverged_loss_names_its_part_and_the_steps_it_went_bad_between():
    watch = FiniteWatch()
    good = {"dino_global": torch.tensor(1.0), "ibot": torch.tensor(2.0), "total": torch.tensor(3.0)}
    watch.add(good)
    watch.check(5)  # finite up to step 5
    watch.add(good)
    watch.add({**good, "ibot": torch.tensor(float("nan"))})
    watch.add(good)  # a later finite step does not hide it
    with pytest.raises(TrainingDiverged, match="'ibot' became nan or inf between steps 6 and 8"):
        watch.check(8)


def test_missing_shards_and_bad_crop_sizes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"no \.tar shards"):
        shard_urls(tmp_path)
    with pytest.raises(ConfigError, match=r"not a multiple of model\.patch_size"):
        validate_tree(TrainConfig, tiny_train_tree(tmp_path, tmp_path, crops={"global_size": 30}), "test")
    with pytest.raises(ConfigError, match="did you mean"):
        validate_tree(TrainConfig, tiny_train_tree(tmp_path, tmp_path, optim={"base_lrr": 1.0}), "test")


def test_teacher_update_is_an_exponential_moving_average(shards, tmp_path):
    model = DinoV2(_config(shards, tmp_path))
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = model.teacher.backbone.cls_token.clone()
    model.teacher.update(model.student, momentum=0.75)
    expected = 0.75 * before + 0.25 * model.student.backbone.cls_token
    assert torch.allclose(model.teacher.backbone.cls_token, expected)
    model.teacher.update(model.student, momentum=0.0)
    assert torch.equal(model.teacher.dino_head.mlp[0].weight, model.student.dino_head.mlp[0].weight)


def test_resuming_with_a_different_model_is_refused_before_loading(shards, tmp_path):
    from foundation.errors import LvdError

    train(_config(shards, tmp_path, run={"max_steps": 2}))
    with pytest.raises(LvdError, match=r"different model\.embed_dim"):
        train(_config(shards, tmp_path, run={"max_steps": 4}, model={"embed_dim": 64}))
    assert train(_config(shards, tmp_path, run={"max_steps": 3}, optim={"base_lr": 0.001})).steps == 3


def test_each_shard_is_closed_once_read_and_the_last_when_the_stream_is_dropped(shards, monkeypatch):
    opened = []

    def noting(url):
        opened.append(open(url, "rb"))  # noqa: SIM115 (tar_samples closes it: the test checks that)
        return opened[-1]

    monkeypatch.setattr("training.data.open_input", noting)
    urls = shard_urls(shards)
    samples = tar_samples([{"url": url} for url in urls], handler=lambda exc: False)
    for _ in range(16 + 1):  # the first shard whole (write_concept_shards: 16 images each), one of the second
        next(samples)
    assert [stream.closed for stream in opened] == [True, False]
    samples.close()
    assert [stream.closed for stream in opened] == [True, True]
