"""Frozen-feature evaluation: weighted kNN (DINO's protocol) and a linear probe.

Features come from any registered embedder (`lvd:<export>`, `dinov2:vitl14` with a checkpoint,
`timm:...`), so this project's models and official ones are measured the same way: the
L2-normalised CLS token of the centre crop. Labelled data is an image folder, `ROOT/<label>/*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from foundation.errors import ConfigError
from models.embedders.base import Embedder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass(frozen=True)
class LabelledImages:
    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]


def image_folder(root: str | Path, classes: list[str] | None = None) -> LabelledImages:
    """`root/<class>/<image>`; pass the train split's `classes` to keep label ids aligned across splits."""
    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    classes = classes or found
    if not found:
        raise ConfigError(f"{root}: expected one folder of images per class")
    unknown = set(found) - set(classes)
    if unknown:
        raise ConfigError(f"{root}: classes {sorted(unknown)} are not in the training split")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()) if (root / name).is_dir() else []:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    return LabelledImages(paths, torch.tensor(labels), classes)


def extract_features(embedder: Embedder, paths: list[Path], batch_size: int = 64) -> torch.Tensor:
    features = []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as image:
                batch.append(embedder.preprocess(image))
        features.append(embedder(np.stack(batch)).float().cpu())
    return torch.cat(features)


def knn_predict(
    train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, k: int = 20, temperature: float = 0.07
) -> torch.Tensor:
    """Each query's class by similarity-weighted vote of its k nearest training features (weights exp(s/T))."""
    num_classes = int(train_labels.max()) + 1
    similarity = F.normalize(query, dim=1) @ F.normalize(train, dim=1).t()
    top, index = similarity.topk(min(k, train.shape[0]), dim=1)
    votes = torch.zeros(query.shape[0], num_classes)
    votes.scatter_add_(1, train_labels[index], (top / temperature).exp())
    return votes.argmax(dim=1)


def linear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    query: torch.Tensor,
    epochs: int = 200,
    learning_rates: tuple[float, ...] = (0.01, 0.1, 1.0),
    seed: int = 0,
) -> torch.Tensor:
    """Predictions of a softmax classifier on frozen features; the lr is picked on a held-out fifth of train."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(train.shape[0], generator=generator)
    held = order[: max(1, train.shape[0] // 5)]
    fit = order[held.shape[0] :]
    best = max(
        learning_rates,
        key=lambda lr: (
            (_fit_linear(train[fit], train_labels[fit], lr, epochs, seed)(train[held]) == train_labels[held])
            .float()
            .mean()
        ),
    )
    return _fit_linear(train, train_labels, best, epochs, seed)(query)


def _fit_linear(features: torch.Tensor, labels: torch.Tensor, lr: float, epochs: int, seed: int):
    torch.manual_seed(seed)
    mean, std = features.mean(0), features.std(0) + 1e-6
    layer = torch.nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    x = (features - mean) / std
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(layer(x), labels).backward()
        optimizer.step()
    return lambda query: layer((query - mean) / std).argmax(dim=1).detach()


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).float().mean())


def evaluate_folders(
    protocol: str,
    model: str,
    train_dir: Path,
    val_dir: Path,
    weights: str | None = None,
    k: int = 20,
    temperature: float = 0.07,
    seed: int = 0,
) -> dict[str, object]:
    """`lvd eval`: features of both folders, then kNN or a linear probe; a JSON-ready result."""
    from models.embedders import create_embedder

    if protocol not in ("knn", "linear"):
        raise ConfigError(f"evaluation protocol must be 'knn' or 'linear', not {protocol!r}")
    train_set = image_folder(train_dir)
    val_set = image_folder(val_dir, train_set.classes)
    torch.manual_seed(seed)  # the random-init baseline is reproducible
    embedder = create_embedder(model, weights=weights)
    train_features = extract_features(embedder, train_set.paths)
    val_features = extract_features(embedder, val_set.paths)
    if protocol == "knn":
        predicted = knn_predict(train_features, train_set.labels, val_features, k, temperature)
        settings = {"k": k, "temperature": temperature}
    else:
        predicted = linear_probe(train_features, train_set.labels, val_features, seed=seed)
        settings = {}
    return {
        "protocol": protocol,
        "model": model,
        "weights": weights,
        **settings,
        "classes": len(train_set.classes),
        "train_images": len(train_set.paths),
        "val_images": len(val_set.paths),
        "top1": accuracy(predicted, val_set.labels),
    }
