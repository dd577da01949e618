"""`ray job submit -- python -m pipelines.curate` on a two-node cluster on loopback: the same bytes as
an in-process run, and the same bytes again when Ray workers are killed mid-ingest and mid-embed."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from curation.pipeline import STAGES, curate
from curation.run_config import load_curation_config
from tests.ray_cluster import LoopbackCluster, loopback_cluster
from tests.stage_output import stage_files
from tests.test_curation_run import check_curated_against_truth

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    with loopback_cluster(nodes=2, cpus_per_node=1) as running:
        yield running


@pytest.fixture(scope="module")
def local_run(crawl, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local") / "run"
    curate(load_curation_config(crawl / "curation.yaml"), run_dir, executor="local")
    return run_dir


def submit(cluster: LoopbackCluster, config: Path, run_dir: Path, *args: str) -> subprocess.Popen:
    """`ray job submit` of a run: `args` are overrides, and options after them."""
    command = ["ray", "job", "submit", f"--address={cluster.dashboard}", f"--working-dir={REPO}", "--"]
    command += ["python", "-m", "pipelines.curate", str(config), *args, "--run-dir", str(run_dir)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env)


def finish(job: subprocess.Popen) -> None:
    output, _ = job.communicate(timeout=900)
    assert job.returncode == 0 and "succeeded" in output, output[-4000:]


def assert_same_stages(run_dir: Path, reference: Path) -> None:
    for stage in STAGES:
        assert stage_files(run_dir, stage) == stage_files(reference, stage), stage


def test_a_ray_job_gives_the_bytes_of_an_in_process_run(cluster, crawl, truth, local_run, tmp_path):
    job = submit(cluster, crawl / "curation.yaml", tmp_path / "run")
    finish(job)
    check_curated_against_truth(tmp_path / "run", crawl, truth)
    assert_same_stages(tmp_path / "run", local_run)


class Killer(threading.Thread):
    """Kills one Ray worker process of each named kind (SIGKILL, as the OOM killer does), in order."""

    def __init__(self, cluster: LoopbackCluster, titles: list[str]):
        super().__init__(daemon=True)
        self.cluster, self.titles, self.killed, self.stop = cluster, titles, [], threading.Event()

    def run(self) -> None:
        for title in self.titles:
            while not self.stop.is_set():
                found = self.cluster.processes(title)
                if found:
                    found[0].kill()
                    self.killed.append(title)
                    break
                time.sleep(0.05)


def test_killing_ray_workers_mid_ingest_and_mid_embed_still_gives_the_same_bytes(cluster, crawl, local_run, tmp_path):
    killer = Killer(cluster, ["ray::ingest_shard", "BatchOfOneWorker"])
    killer.start()
    job = submit(cluster, crawl / "curation.yaml", tmp_path / "run")
    try:
        finish(job)
    finally:
        killer.stop.set()
    assert killer.killed == ["ray::ingest_shard", "BatchOfOneWorker"]
    assert_same_stages(tmp_path / "run", local_run)
