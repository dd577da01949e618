"""The ingest stage spread as Ray tasks on an embedded local Ray gives the same bytes as a process pool."""

from __future__ import annotations

import pytest
import ray

from curation.pipeline import curate
from curation.run_config import load_curation_config
from tests.stage_output import stage_files


@pytest.mark.slow
def test_ray_executor_matches_local_executor(crawl, tmp_path):
    config = load_curation_config(crawl / "curation.yaml", ["ingest.shard_size=400"])
    curate(config, tmp_path / "local", ("ingest",), executor="local")
    try:
        curate(config, tmp_path / "ray", ("ingest",), executor="ray")
    finally:
        ray.shutdown()
    local, remote = stage_files(tmp_path / "local"), stage_files(tmp_path / "ray")
    assert local == remote and sum(name.endswith(".tar") for name in local) == 5 + 5
