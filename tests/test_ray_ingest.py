"""The ingest stage spread as Ray tasks on an embedded local Ray gives the same bytes as a process pool."""

from __future__ import annotations

import pytest
import ray

from curation.run_config import load_curation_config
from pipelines.curate import curate


@pytest.mark.slow
def test_ray_executor_matches_local_executor(crawl, tmp_path):
    config = load_curation_config(crawl / "curation.yaml", ["ingest.shard_size=400"])
    curate(config, tmp_path / "local", ("ingest",), executor="local")
    try:
        curate(config, tmp_path / "ray", ("ingest",), executor="ray")
    finally:
        ray.shutdown()
    local = {p.name: p.read_bytes() for p in sorted((tmp_path / "local" / "ingest").iterdir())}
    remote = {p.name: p.read_bytes() for p in sorted((tmp_path / "ray" / "ingest").iterdir())}
    assert local == remote and len(local) == 5 + 2
