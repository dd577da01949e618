"""Dedup's and retrieve's search tasks as Ray tasks of two CPUs each give the local run's bytes."""

from __future__ import annotations

import subprocess

import pytest

from curation.pipeline import curate
from curation.run_config import load_curation_config
from tests.stage_output import curate_command, run_dir_with, stage_files

SEARCHED = ("dedup", "decontam", "retrieve")


@pytest.mark.slow
def test_wide_search_tasks_on_ray_match_the_local_run(crawl, tmp_path):
    """`threads` is the CPUs a Ray search task reserves (fewer copies of the index a node) and its
    Faiss threads: neither may change a byte."""
    config = load_curation_config(crawl / "curation.yaml")
    curate(config, tmp_path / "local", ("ingest", "embed", *SEARCHED), executor="local")
    run_dir = run_dir_with(tmp_path / "local", tmp_path / "ray", ("ingest", "embed"))
    overrides = ["dedup.threads=2", "retrieve.threads=2", "dedup.chunk_size=400", "retrieve.chunk_size=10"]
    command = curate_command(crawl / "curation.yaml", run_dir, *overrides, executor="ray")
    done = subprocess.run([*command, "--from", "dedup", "--to", "retrieve"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in SEARCHED:
        assert stage_files(run_dir, stage) == stage_files(tmp_path / "local", stage), stage
