"""`lvd report TRAIN_DIR`: loss parts, schedules and throughput of a training run, from its metrics.jsonl.

When the run was evaluated (the curation-value benchmark writes TRAIN_DIR/evaluation.json: what it
trained on and its kNN and linear-probe top-1 per task), the page shows those figures too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from foundation.errors import LvdError
from foundation.report import figures
from foundation.report.page import write_page


def write_training_report(train_dir: Path, out_dir: Path | None = None) -> dict[str, Any]:
    metrics = Path(train_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise LvdError(f"{train_dir} has no metrics.jsonl; is it a training run's output_dir?")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        raise LvdError(f"{metrics} is empty: the run has not logged a step yet")
    steps = [r["step"] for r in rows]

    def series(*names: str) -> dict[str, list[float]]:
        return {name: [r[name] for r in rows] for name in names if name in rows[0]}

    losses = series(*(k for k in rows[0] if k.startswith("loss/")))
    plots = {
        "losses": figures.lines(steps, losses, "Loss parts", "loss"),
        "learning rate": figures.lines(steps, series("lr", "last_layer_lr"), "Learning rate", "lr"),
        "schedules": figures.lines(steps, series("wd", "momentum", "teacher_temp"), "Schedules", "value"),
        "throughput": figures.lines(steps, series("images_per_s"), "Throughput", "images / s"),
        "grad norm": figures.lines(steps, series("grad_norm"), "Gradient norm", "norm", log=True),
    }
    stats = {"steps": steps[-1], "logged": len(rows), "last": {k: round(v, 6) for k, v in rows[-1].items()}}
    evaluation = Path(train_dir) / "evaluation.json"
    if evaluation.is_file():
        stats["evaluation"] = json.loads(evaluation.read_text())
    out = out_dir or Path(train_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_page(
        out,
        __package__,
        "training.html.j2",
        stats,
        title=f"Training report: {Path(train_dir).resolve().name}",
        subtitle=f"{steps[-1]} steps",
        plots=plots,
    )
    return stats
