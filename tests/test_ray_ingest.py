"""The ingest stage spread as Ray tasks on an embedded local Ray gives the same bytes as a process pool."""

from __future__ import annotations

import subprocess

import pytest

from curation.pipeline import curate
from curation.run_config import load_curation_config
from tests.stage_output import curate_command, stage_files


@pytest.mark.slow
def test_ray_executor_matches_local_executor(crawl, tmp_path):
    overrides = ["ingest.shard_size=400"]
    curate(load_curation_config(crawl / "curation.yaml", overrides), tmp_path / "local", ("ingest",), executor="local")
    command = curate_command(crawl / "curation.yaml", tmp_path / "ray", *overrides, executor="ray")
    subprocess.run([*command, "--only", "ingest"], check=True, capture_output=True)
    local, remote = stage_files(tmp_path / "local"), stage_files(tmp_path / "ray")
    assert local == remote and sum(name.endswith(".tar") for name in local) == 5 + 5
