"""On the demo's curated shards, pretraining and distillation learn something measurable (slow: ~8 min).

The check is the one the DINOv2 paper reports, at toy scale: kNN top-1 of frozen features on
labelled images of the synthetic concepts (fresh draws, not crawl images), compared with the same
network at random init, and a distilled student compared with one trained from scratch for the
same number of steps. Margins are set below the measured ones (seed 0: teacher +0.077 over random
init; distilled student +0.043 over its random init) so the test fails on a broken loss or a
collapsed model, not on noise.
"""

from __future__ import annotations

import subprocess

import pytest

from pipelines.demo_training import train_distill_evaluate
from tests.stage_output import curate_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the shared fixture trains three models


@pytest.fixture(scope="module")
def demo_rows(crawl, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    done = subprocess.run(curate_command(crawl / "curation.yaml", workdir / "run"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, {row.model: row for row in train_distill_evaluate(workdir)}


def _mean_losses(model, batches) -> dict[str, float]:
    import torch

    from training.student_teacher import compute_losses

    with torch.no_grad():
        parts = [compute_losses(model, model.student, batch, teacher_temp=0.07) for batch in batches]
    return {name: sum(p[name].item() for p in parts) / len(parts) for name in parts[0]}


def test_pretraining_lowers_the_loss_on_fixed_batches(demo_rows):
    """The loss logged during training mixes in the teacher-temperature warmup, so compare the
    initial and the trained model on the same batches at one fixed teacher temperature instead."""
    import torch

    from training.checkpoint import load_latest
    from training.config import TrainConfig
    from training.data import loader_for
    from training.optim import build_optimizer
    from training.student_teacher import DinoV2

    workdir, _ = demo_rows
    config = TrainConfig.model_validate_json((workdir / "train" / "config.json").read_text())
    loader = loader_for(config, rank=0, start_step=0, seed=123, workers=0)
    batches = [next(loader) for _ in range(4)]
    torch.manual_seed(config.run.seed)
    initial = _mean_losses(DinoV2(config), batches)
    trained_model = DinoV2(config)
    load_latest(workdir / "train" / "checkpoints", trained_model, build_optimizer(trained_model.student, config))
    trained = _mean_losses(trained_model, batches)
    # Measured at seed 0: total 8.56 -> 7.86, iBOT 2.92 -> 2.52, KoLeo 1.96 -> -0.09.
    assert trained["total"] < initial["total"] - 0.3
    assert trained["ibot"] < initial["ibot"] and trained["koleo"] < initial["koleo"]


def test_pretrained_features_beat_the_same_network_at_random_init(demo_rows):
    _, rows = demo_rows
    assert rows["teacher (pretrained)"].knn_top1 >= rows["teacher arch, random init"].knn_top1 + 0.03


def test_distilled_student_learns_and_keeps_level_with_the_one_trained_from_scratch(demo_rows):
    """At the demo's scale distillation does not beat training from scratch by more than a seed's
    spread (README, "Distillation at the demo's scale"): distilled minus scratch measured -0.010,
    -0.007 and -0.003 kNN top-1 at seeds 0, 1, 2 (torch 2.14; at the EMA momentum 0.996 of
    before, +0.020, -0.010, +0.013, and 0.000 at seed 0 with torch 2.11). What holds at every
    seed: the distilled student clears its random init (+0.057, +0.040, +0.050) and stays within
    0.02 of scratch."""
    _, rows = demo_rows
    distilled, scratch = rows["student (distilled)"], rows["student (from scratch)"]
    at_init = rows["student arch, random init"].knn_top1
    assert (distilled.steps, distilled.params) == (scratch.steps, scratch.params)
    assert distilled.knn_top1 >= at_init + 0.015
    assert distilled.knn_top1 >= scratch.knn_top1 - 0.02
    assert scratch.knn_top1 >= at_init
