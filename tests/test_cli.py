"""The `lvd` command as a user runs it: demo end to end, status, and a clear error on a bad config."""

from __future__ import annotations

import subprocess
import sys

import yaml


def lvd(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_demo_runs_end_to_end_and_status_shows_the_counts(tmp_path):
    # The training half (minutes on CPU) is checked by the slow tests/test_train_learns.py.
    result = lvd("demo", "--workdir", str(tmp_path / "demo"), "--images", "150", "--no-train")
    assert result.returncode == 0, result.stderr
    assert "ingest: 150 inputs ->" in result.stdout
    status = lvd("status", str(tmp_path / "demo" / "run"))
    assert status.returncode == 0 and "ingest" in status.stdout and "done" in status.stdout


def test_misspelt_key_exits_2_with_a_one_line_reason(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"ingest": {"sources": [{"kind": "folder", "path": "."}], "shard_sise": 3}}))
    result = lvd("ingest", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "ingest.shard_sise" in result.stdout and "shard_size" in result.stdout
    assert not (tmp_path / "run").exists()


def test_status_of_a_non_run_directory_is_an_error(tmp_path):
    result = lvd("status", str(tmp_path))
    assert result.returncode == 2 and "manifest" in result.stdout


def test_synth_writes_a_crawl_with_its_config(tmp_path):
    result = lvd("synth", str(tmp_path / "c"), "--images", "100", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert {"truth.parquet", "urls.parquet", "curation.yaml", "synth.json"} <= {
        p.name for p in (tmp_path / "c").iterdir()
    }
