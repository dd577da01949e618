"""kNN and linear-probe code against known answers on hand-made features, and `lvd eval` on images."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from curation.synth.labelled import make_labelled
from foundation.errors import ConfigError
from pipelines.cli import app
from tests.test_cli import lvd
from training.eval import accuracy, image_folder, knn_predict, linear_probe


def _clusters(per_class: int, classes: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_separable_clusters_are_classified_perfectly():
    train, train_labels = _clusters(30, 4, seed=0)
    query, query_labels = _clusters(10, 4, seed=0)
    query = query + 0.01
    assert accuracy(knn_predict(train, train_labels, query), query_labels) == 1.0
    assert accuracy(linear_probe(train, train_labels, query), query_labels) == 1.0


def test_labels_unrelated_to_features_give_chance_accuracy():
    generator = torch.Generator().manual_seed(1)
    train, query = torch.randn(1000, 16, generator=generator), torch.randn(1000, 16, generator=generator)
    train_labels, query_labels = (
        torch.randint(4, (1000,), generator=generator),
        torch.randint(4, (1000,), generator=generator),
    )
    for predicted in (knn_predict(train, train_labels, query), linear_probe(train, train_labels, query)):
        assert 0.2 <= accuracy(predicted, query_labels) <= 0.3  # chance is 0.25, ±0.014 one sigma


def test_knn_votes_are_weighted_by_similarity():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # Two class-1 neighbours at cos 0.8 against one class-0 neighbour at cos 1.0: at T = 0.07 the
    # closer one outweighs both (e^(1/0.07) > 2·e^(0.8/0.07)); at T = 1 the majority wins.
    assert knn_predict(train, labels, query, k=3, temperature=0.07).item() == 0
    assert knn_predict(train, labels, query, k=3, temperature=1.0).item() == 1


def test_image_folder_keeps_label_ids_aligned_and_refuses_unknown_classes(tmp_path):
    for split, names in (("train", ["a", "b"]), ("val", ["b"]), ("bad", ["c"])):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "x.jpg").write_bytes(b"")
    train = image_folder(tmp_path / "train")
    assert image_folder(tmp_path / "val", train.classes).labels.tolist() == [1]
    with pytest.raises(ConfigError, match="not in the training split"):
        image_folder(tmp_path / "bad", train.classes)
    with pytest.raises(ConfigError, match="one folder of images per class"):
        image_folder(tmp_path / "missing")


def test_lvd_eval_knn_on_the_synthetic_concepts(tmp_path):
    data = make_labelled(tmp_path / "concepts", train_per_concept=8, val_per_concept=4)
    out = tmp_path / "knn.json"
    result = CliRunner().invoke(
        app,
        ["eval", "knn", "tiny:semantic", "--train", str(data / "train"), "--val", str(data / "val"), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["classes"], report["train_images"], report["val_images"]) == (5, 40, 20)
    assert report["top1"] >= 0.8  # the colour/texture embedder separates the procedural concepts


def test_lvd_eval_rejects_an_unknown_protocol(tmp_path):
    result = lvd("eval", "svm", "tiny", "--train", str(tmp_path), "--val", str(tmp_path))
    assert result.returncode == 2 and "knn' or 'linear" in result.stderr and "Traceback" not in result.stderr
