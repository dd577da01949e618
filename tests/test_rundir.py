"""The run-directory contract: atomic stage output, hash-based skipping, failures that keep partial work."""

from __future__ import annotations

import json

import pytest

from curation.rundir import RunDir, require_new_stage_dir, stage_hash
from foundation.errors import StageError


def test_stage_appears_only_when_done(tmp_path):
    run = RunDir(tmp_path)
    with run.stage("ingest", "h1") as work:
        (work.path / "a.txt").write_text("x")
        assert not (tmp_path / "ingest").exists()
        work.counts = {"n": 1}
    assert (tmp_path / "ingest" / "a.txt").read_text() == "x"
    assert run.is_done("ingest", "h1") and not run.is_done("ingest", "h2")
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["ingest"]["counts"] == {"n": 1}


def test_failure_keeps_partial_work_for_the_same_hash_only(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(RuntimeError), run.stage("embed", "aaaa") as work:
        (work.path / "shard0").write_text("done")
        raise RuntimeError("killed")
    assert run.stage_record("embed")["status"] == "failed"
    with run.stage("embed", "aaaa") as work:
        assert (work.path / "shard0").read_text() == "done"
    with run.stage("embed", "bbbb") as work:
        assert not (work.path / "shard0").exists(), "partial work of another config must not be reused"
    assert run.is_done("embed", "bbbb") and not list(tmp_path.glob("*.partial"))


def test_require_done_names_the_missing_stage(tmp_path):
    with pytest.raises(StageError, match="'dedup' has not finished"):
        RunDir(tmp_path).require_done("dedup")


def test_stage_hash_depends_on_section_and_upstream():
    assert stage_hash("a", {"x": 1}) == stage_hash("a", {"x": 1})
    assert stage_hash("a", {"x": 1}) != stage_hash("a", {"x": 2})
    assert stage_hash("a", {"x": 1}, {"ingest": "h1"}) != stage_hash("a", {"x": 1}, {"ingest": "h2"})


def test_a_non_empty_foreign_directory_is_not_taken_as_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(StageError, match="not a run directory"):
        require_new_stage_dir(tmp_path)
