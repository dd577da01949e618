"""A URL source under `ray job submit`: img2dataset's shards of URLs run as Ray tasks.

A module of its own, so that test_ray_job's module cluster is gone before this one's starts: with
both up, the new head's job agent never registered in CI (120 s), presumably as two clusters on
one machine contend for the agents' default ports."""

from __future__ import annotations

import threading
import time

import pytest

from tests.ray_cluster import LoopbackCluster, loopback_cluster
from tests.test_ray_job import finish, submit

pytestmark = pytest.mark.slow


class Watcher(threading.Thread):
    """Records the pids of the cluster's processes titled `title` (Ray tasks of that name) as they run."""

    def __init__(self, cluster: LoopbackCluster, title: str):
        super().__init__(daemon=True)
        self.cluster, self.title, self.seen, self.stop = cluster, title, set(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.seen.update(process.pid for process in self.cluster.processes(self.title))
            time.sleep(0.05)


def test_a_url_source_is_downloaded_as_ray_tasks_on_the_cluster(served_crawl, pool_truth, tmp_path):
    """Under `ray job submit` img2dataset spreads the shards of URLs as Ray tasks (its ray
    distributor), not as processes the driver starts; every URL is still accounted for.

    A cluster of one node with two CPUs: with two loopback nodes on one machine, the job's driver
    lost its working directory (os.getcwd failed in img2dataset's spawned logger process), which
    a single node did not; the two nodes share one session folder, where Ray unpacks working_dirs."""
    from tests.ingest_checks import check_accounting, check_shards_readable

    source = "ingest.sources=[{kind: urls, path: urls.parquet, download: {timeout: 4, thread_count: 16}}]"
    with loopback_cluster(nodes=1, cpus_per_node=2) as cluster:
        watcher = Watcher(cluster, "ray::ray_download")
        watcher.start()
        args = (source, "ingest.shard_size=400", "--only", "ingest")
        job = submit(cluster, served_crawl / "curation.yaml", tmp_path / "run", *args)
        try:
            finish(job)
        finally:
            watcher.stop.set()
    assert len(watcher.seen) >= 2  # five shards of URLs, two tasks at a time
    check_accounting(tmp_path / "run", pool_truth, lambda row: row["url"], over_http=True)
    check_shards_readable(tmp_path / "run")
