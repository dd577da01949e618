"""Two-process training on CPU (gloo): torchrun with DDP and FSDP2, resume on another world size, Ray Train."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.train_fixtures import tiny_train_tree, write_concept_shards

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_concept_shards(tmp_path_factory.mktemp("curated"))


def _write_config(path, shards, out, **sections):
    path.write_text(yaml.safe_dump(tiny_train_tree(shards, out, **sections)))
    return path


def _torchrun(nproc: int, config, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "pipelines.pretrain", str(config), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_train_then_one_rank_resumes(parallel, shards, tmp_path):
    config = _write_config(tmp_path / "train.yaml", shards, tmp_path / "out", run={"parallel": parallel})
    first = _torchrun(2, config, "run.max_steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "train: 4 steps, 32 images" in first.stdout  # 2 ranks × batch 4 × 4 steps
    # The checkpoint written by 2 ranks loads into 1 (FSDP2 reshards its DTensors on load).
    second_parallel = "fsdp" if parallel == "fsdp" else "ddp"
    second = _torchrun(1, config, "run.max_steps=6", f"run.parallel={second_parallel}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train: 6 steps, 40 images" in second.stdout
    assert _steps(tmp_path / "out") == [1, 2, 3, 4, 5, 6]


def test_fsdp2_trains_with_every_speed_lever_on(shards, tmp_path):
    """Compiled blocks and losses, activation checkpointing, subset drop-path and the blocks
    sharded as one unit, under two FSDP2 ranks."""
    run = {"parallel": "fsdp", "compile": True, "activation_checkpointing": True, "block_chunks": 1}
    config = _write_config(tmp_path / "train.yaml", shards, tmp_path / "out", run=run, model={"drop_path_rate": 0.4})
    done = _torchrun(2, config, "run.max_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [json.loads(line)["loss/total"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    exported = torch.load(tmp_path / "out" / "export" / "teacher_backbone.pth", weights_only=True)
    assert "blocks.0.attn.qkv.weight" in exported  # compiled in place: DINOv2's keys


def test_ray_train_runs_the_same_loop_on_two_workers(shards, tmp_path):
    config = _write_config(tmp_path / "train.yaml", shards, tmp_path / "out", run={"max_steps": 2})
    command = [sys.executable, "-m", "pipelines.cli", "train", str(config), "--ray-workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert _steps(tmp_path / "out") == [1, 2]
    assert (tmp_path / "out" / "export" / "teacher_backbone.pth").is_file()


def test_two_nodes_rendezvous_on_loopback(shards, tmp_path):
    """`torchrun --nnodes 2`, one process per 'node', as a multi-node launch does across machines."""
    from tests.conftest import free_port

    config = _write_config(tmp_path / "train.yaml", shards, tmp_path / "out", run={"max_steps": 2})
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={rank}",
                "--nproc-per-node=1",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "pipelines.pretrain",
                str(config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "train: 2 steps, 16 images" in outputs[0][0]  # 2 nodes × batch 4 × 2 steps
