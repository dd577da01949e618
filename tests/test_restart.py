"""Kill -9 the ingest mid-way, run the same command again: same bytes as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from curation.rundir import RunDir
from tests.processes import alive_with
from tests.stage_output import curate_command, stage_files

OVERRIDES = ["ingest.shard_size=40", "ingest.workers=1"]


def command(crawl: Path, run_dir: Path, *extra: str) -> list[str]:
    return curate_command(crawl / "curation.yaml", run_dir, *OVERRIDES, *extra)


def test_sigkill_mid_ingest_then_rerun_is_byte_identical(crawl, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(crawl, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done_parts: list[Path] = []
    while time.monotonic() < deadline and len(done_parts) < 5:
        done_parts = sorted(killed.glob("ingest.*.partial/parts/*.index.parquet"))
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(done_parts) >= 5, "the ingest finished or never started before the kill"
    assert not outliving(str(killed)), "ingest's worker processes outlived the killed command"
    assert RunDir(killed).stage_record("ingest")["status"] == "running"
    assert not (killed / "ingest").exists()
    finished_tars = [p.parent.parent / (p.name.split(".")[0] + ".tar") for p in done_parts]
    mtimes = {path.name: path.stat().st_mtime_ns for path in finished_tars}

    subprocess.run(command(crawl, killed), check=True, capture_output=True)
    fresh = tmp_path / "fresh"
    subprocess.run(command(crawl, fresh), check=True, capture_output=True)

    assert stage_files(killed) == stage_files(fresh)
    for name, mtime in mtimes.items():
        assert (killed / "ingest" / name).stat().st_mtime_ns == mtime, f"shard {name} was written again"
    assert not list(killed.glob("*.partial"))


def outliving(marker: str, seconds: float = 10) -> list[psutil.Process]:
    """Processes whose command line names `marker` still alive after `seconds`."""
    deadline = time.monotonic() + seconds
    while (alive := alive_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_second_run_skips_a_finished_stage(crawl, tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(command(crawl, run_dir), check=True, capture_output=True)
    before = (run_dir / "ingest" / "index.parquet").stat().st_mtime_ns
    again = subprocess.run(command(crawl, run_dir), check=True, capture_output=True, text=True)
    assert "skipped" in again.stdout
    assert (run_dir / "ingest" / "index.parquet").stat().st_mtime_ns == before

    changed = subprocess.run(command(crawl, run_dir, "ingest.min_side=200"), check=True, capture_output=True, text=True)
    assert "skipped" not in changed.stdout
    counts = RunDir(run_dir).stage_record("ingest")["counts"]
    assert counts["quarantined.too_small"] > 100  # synth sides are 192-320 (and smaller for resized copies)
