"""The training half of `lvd demo`: pretrain, distil, train the student from scratch, evaluate all.

Runs the demo configs on the curated shards of the demo's curation run, then measures each model
and its random-init twin with weighted kNN on a fresh labelled set of the synthetic concepts, so
the table answers the two questions the issue asks: did pretraining learn anything (trained vs
random init of the same network), and did distillation help (distilled vs from-scratch student of
the same size and steps).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from curation.synth.labelled import make_labelled
from foundation.config import load_config
from models.backbones import load_backbone
from training.config import TrainConfig
from training.distill import DistillConfig, distill
from training.eval import evaluate_folders
from training.train_loop import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "training"


@dataclass(frozen=True)
class EvalRow:
    model: str
    params: int
    steps: int
    knn_top1: float
    seed: int


def _params(export: Path) -> int:
    return sum(p.numel() for p in load_backbone(f"lvd:{export}").parameters())


def train_distill_evaluate(workdir: Path, seed: int = 0) -> list[EvalRow]:
    workdir = workdir.resolve()
    shards = workdir / "run" / "curated"
    common = [f"data.shards={shards}", f"run.seed={seed}"]
    teacher_config = load_config(TrainConfig, CONFIGS / "demo.yaml", [*common, f"run.output_dir={workdir / 'train'}"])
    student_overrides = [*common, f"distill.teacher.run_dir={workdir / 'train'}"]
    student_config = load_config(
        DistillConfig, CONFIGS / "distill_demo.yaml", [*student_overrides, f"run.output_dir={workdir / 'distill'}"]
    )
    scratch_tree = student_config.model_dump(exclude={"distill"})
    scratch_tree["run"]["output_dir"] = workdir / "scratch"
    scratch_config = TrainConfig.model_validate(scratch_tree)

    teacher = train(teacher_config)
    student = distill(student_config)
    scratch = train(scratch_config)

    concepts = make_labelled(workdir / "concepts", train_per_concept=40, val_per_concept=60, seed=seed + 1)

    def knn(export: Path, weights: str | None = None) -> float:
        name = f"lvd:{export.parent}"
        result = evaluate_folders("knn", name, concepts / "train", concepts / "val", weights=weights, seed=seed)
        return float(result["top1"])

    rows = [
        EvalRow("teacher (pretrained)", _params(teacher.export.parent), teacher.steps, knn(teacher.export), seed),
        EvalRow("teacher arch, random init", _params(teacher.export.parent), 0, knn(teacher.export, "random"), seed),
        EvalRow("student (distilled)", _params(student.export.parent), student.steps, knn(student.export), seed),
        EvalRow("student (from scratch)", _params(scratch.export.parent), scratch.steps, knn(scratch.export), seed),
        EvalRow("student arch, random init", _params(scratch.export.parent), 0, knn(scratch.export, "random"), seed),
    ]
    (workdir / "eval.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows
