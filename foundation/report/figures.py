"""Plots as inline PNG data URIs (matplotlib's Agg backend; no display, no files, no CDN)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _to_uri(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def histogram(
    values: np.ndarray,
    title: str,
    xlabel: str,
    bins: int = 40,
    threshold: float | None = None,
    log: bool = False,
    ylabel: str = "images",
) -> str:
    figure, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=bins, color="#4c72b0", log=log)
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold}")
        ax.legend()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _to_uri(figure)


def bars(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, log: bool = False) -> str:
    figure, ax = plt.subplots(figsize=(5.5, 3))
    ax.bar(range(len(values)), values, color="#4c72b0", log=log)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    return _to_uri(figure)


def lines(steps: Sequence[int], series: dict[str, Sequence[float]], title: str, ylabel: str, log: bool = False) -> str:
    figure, ax = plt.subplots(figsize=(5.5, 3))
    for name, values in series.items():
        ax.plot(steps, values, label=name)
    if log:
        ax.set_yscale("log")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.legend(fontsize=7)
    return _to_uri(figure)


def boxes(groups: dict[str, np.ndarray], title: str, ylabel: str, threshold: float | None = None) -> str:
    figure, ax = plt.subplots(figsize=(5.5, 3))
    names = [name for name, values in groups.items() if len(values)]
    if names:
        ax.boxplot([groups[n] for n in names], tick_labels=names)
    if threshold is not None:
        ax.axhline(threshold, color="#c44e52", linestyle="--")
    ax.set(title=title, ylabel=ylabel)
    return _to_uri(figure)
