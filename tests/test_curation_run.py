"""The whole curation run on the synthetic crawl: curated shards checked against the planted truth."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation import shards
from curation.assemble import AssembleConfig, run_assemble
from curation.pipeline import STAGES, curate
from curation.run_config import load_curation_config
from curation.rundir import RunDir
from curation.shards import iter_samples
from curation.verify import verify_tasks
from foundation.errors import CorruptInput, StageError
from foundation.executors import process_map, serial_map
from foundation.storage import open_input
from tests.stage_output import curate_command, stage_files, with_an_image_zeroed


@pytest.fixture(scope="module")
def curated_run(crawl, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("curate") / "run"
    curate(load_curation_config(crawl / "curation.yaml"), run_dir, executor="local")
    return run_dir


def pool_truth_of_keys(run_dir: Path, crawl: Path, truth: list[dict]) -> dict[str, dict]:
    by_path = {str(crawl / r["path"]): r for r in truth}
    keys = {}
    for index in [run_dir / "ingest" / "index.parquet", *(run_dir / "ingest").glob("*/*/index.parquet")]:
        for row in pq.read_table(index, columns=["key", "source"]).to_pylist():
            keys[row["key"]] = by_path[row["source"]]
    return keys


def curated_samples(run_dir: Path) -> list[dict]:
    shards = sorted(str(p) for p in (run_dir / "curated").glob("*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode())


def check_curated_against_truth(run_dir: Path, crawl: Path, truth: list[dict]) -> None:
    """Retrieved images are of the seed's concept; no duplicate pair and no eval leak made it in."""
    by_key = pool_truth_of_keys(run_dir, crawl, truth)
    samples = curated_samples(run_dir)
    assert len(samples) == len({s["__key__"] for s in samples}) > 0
    seed_concept = {r["set"]: r["concept"] for r in truth if r["role"] == "seed"}
    for row in load_curation_config(crawl / "curation.yaml").retrieve.sources:
        members = [s for s in samples if any(e["seed_set"] == row.name for e in s["json"]["lineage"])]
        concepts = [by_key[s["__key__"]]["concept"] for s in members]
        precision = sum(c == seed_concept[row.name] for c in concepts) / len(concepts)
        assert precision >= 0.95, (row.name, Counter(concepts))
    pool_members = [by_key[s["__key__"]] for s in samples if s["json"]["collection"] == "pool"]
    groups = Counter(r["dup_group"] for r in pool_members if r["dup_group"])
    assert not [g for g, n in groups.items() if n > 1], "two copies of one picture were curated"
    assert not [r for r in pool_members if r["leak_of"] or r["broken_reason"]]


def test_curated_shards_hold_the_seed_concepts_without_duplicates_or_leaks(curated_run, crawl, truth):
    check_curated_against_truth(curated_run, crawl, truth)


def test_lineage_and_index_describe_every_sample(curated_run):
    samples = curated_samples(curated_run)
    index = {r["key"]: r for r in pq.read_table(curated_run / "curated" / "index.parquet").to_pylist()}
    assert set(index) == {s["__key__"] for s in samples}
    for sample in samples:
        meta = sample["json"]
        assert meta["source"] and meta["lineage"]
        for entry in meta["lineage"]:
            assert {"seed_set", "strategy", "query_key", "similarity"} <= set(entry)
        assert index[sample["__key__"]]["seed_sets"] == sorted({e["seed_set"] for e in meta["lineage"]})
    for path in (curated_run / "curated").glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in (m for m in tar if m.name.endswith(".jpg")):
                jpeg = tar.extractfile(member).read()
                assert index[member.name.removesuffix(".jpg")]["sha256"] == hashlib.sha256(jpeg).hexdigest()


def test_rows_meet_their_targets_or_say_why_not(curated_run):
    rows = json.loads((curated_run / "retrieve" / "rows.json").read_text())
    assert set(rows) == {"seed_cat", "seed_stripes", "seed_landscape"}
    assert rows["seed_cat"]["retrieved"] == rows["seed_cat"]["queries"] == 8
    for row in rows.values():
        assert row["retrieved"] + row["shortfall"] == row["target"]
        assert (row["shortfall"] == 0) == (row["cause"] == "")


def test_every_input_image_is_accounted_for_once(curated_run, pool_truth):
    counts = RunDir(curated_run).stage_record("curated")["counts"]
    fates = {k: v for k, v in counts.items() if k.startswith("pool.")}
    assert set(fates) == {
        "pool.quarantined",
        "pool.duplicate",
        "pool.contaminated",
        "pool.curated",
        "pool.not_retrieved",
    }
    assert sum(fates.values()) == len(pool_truth)


def test_the_same_crawl_curated_from_another_folder_gives_the_same_keys_and_images(crawl, curated_run, tmp_path):
    """Keys hash what names an input below its source folder, so moving the crawl changes nothing."""
    moved = tmp_path / "a" / "much" / "deeper" / "mount" / "crawl"
    shutil.copytree(crawl, moved)
    run_dir = tmp_path / "run"
    curate(load_curation_config(moved / "curation.yaml"), run_dir, executor="local")
    for stage, table in (("ingest", "index.parquet"), ("ingest", "quarantine.parquet"), ("curated", "index.parquet")):
        here, there = (pq.read_table(r / stage / table).drop_columns(["source"]) for r in (curated_run, run_dir))
        assert here.equals(there), (stage, table)
    assert curated_images(run_dir) == curated_images(curated_run)


def curated_images(run_dir: Path) -> dict[str, bytes]:
    return {key: sample["jpg"] for tar in (run_dir / "curated").glob("*.tar") for key, sample in iter_samples(tar)}


def test_one_thread_gives_the_bytes_of_many(crawl, curated_run, tmp_path):
    """A Ray job runs with OMP_NUM_THREADS=1; a local run with every core. Every stage must agree."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(curate_command(crawl / "curation.yaml", tmp_path), check=True, capture_output=True, env=env)
    assert os.cpu_count() > 1
    for stage in STAGES:
        assert stage_files(tmp_path, stage) == stage_files(curated_run, stage), stage


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_during_each_stage_then_rerun_gives_identical_shards(crawl, curated_run, tmp_path, stage):
    command = curate_command(crawl / "curation.yaml", tmp_path)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(tmp_path.glob(f"{stage}.*.partial")) and proc.poll() is None:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    record = RunDir(tmp_path).stage_record(stage)
    assert list(tmp_path.glob(f"{stage}.*.partial")) and (record is None or record["status"] == "running"), (
        f"the kill missed stage {stage}"
    )
    subprocess.run(command, check=True, capture_output=True)
    assert stage_files(tmp_path, "curated") == stage_files(curated_run, "curated")


def lvd_verify(run_dir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines.cli", "verify", str(run_dir), "--workers", "2"]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LVD_DEBUG": ""})


def test_verify_reads_back_every_stored_image_of_an_intact_run(curated_run):
    ingested = sum(pq.ParquetFile(p).metadata.num_rows for p in (curated_run / "ingest").rglob("index.parquet"))
    curated = pq.ParquetFile(curated_run / "curated" / "index.parquet").metadata.num_rows
    done = lvd_verify(curated_run)
    assert done.returncode == 0, done.stderr
    assert f"ingest 0 of {ingested} images damaged in 0 of " in done.stdout, done.stdout
    assert f"curated 0 of {curated} images damaged in 0 of " in done.stdout
    assert "every image matches its recorded sha256" in done.stdout


def test_verify_names_every_damaged_shard_and_the_stage_to_run_again(curated_run, tmp_path):
    """An image zeroed in an ingest shard, and a curated shard cut short, as storage damages files."""
    run_dir = tmp_path / "run"
    for stage in ("ingest", "curated"):
        shutil.copytree(curated_run / stage, run_dir / stage)
    changed = with_an_image_zeroed(run_dir / "ingest" / "000001.tar", run_dir / "ingest" / "000001.tar")
    in_shard = pq.read_table(run_dir / "ingest" / "index.parquet", filters=[("shard", "==", 1)]).num_rows
    cut = run_dir / "curated" / "000000.tar"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2 + 100])
    done = lvd_verify(run_dir)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{run_dir / 'ingest' / '000001.tar'}: 1 of {in_shard} images changed (first {changed})" in done.stdout, (
        done.stdout
    )
    assert f"{cut}: unreadable after " in done.stdout
    assert done.stderr.splitlines()[-1].startswith("error: verify: ingest 1 of ")
    assert done.stderr.rstrip().endswith("re-run from ingest (--from ingest)"), done.stderr


def test_verify_sends_back_to_the_curated_stage_when_only_its_shards_are_damaged(curated_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(curated_run / "ingest", run_dir / "ingest")
    shutil.copytree(curated_run / "curated", run_dir / "curated")
    changed = with_an_image_zeroed(run_dir / "curated" / "000000.tar", run_dir / "curated" / "000000.tar")
    done = lvd_verify(run_dir)
    assert done.returncode == 2 and f"images changed (first {changed})" in done.stdout, done.stdout + done.stderr
    assert done.stderr.rstrip().endswith("re-run from curated (--from curated)"), done.stderr


def test_a_curated_folder_copied_on_its_own_is_verified_against_its_index(curated_run, tmp_path):
    """What a published curated set's users hold: its shards and index, not the run that made them."""
    copy = tmp_path / "published"
    shutil.copytree(curated_run / "curated", copy)
    curated = pq.ParquetFile(copy / "index.parquet").metadata.num_rows
    intact = lvd_verify(copy)
    assert intact.returncode == 0 and f"curated 0 of {curated} images damaged" in intact.stdout, intact.stderr
    changed = with_an_image_zeroed(copy / "000000.tar", copy / "000000.tar")
    damaged = lvd_verify(copy)
    assert damaged.returncode == 2 and f"images changed (first {changed})" in damaged.stdout, damaged.stderr
    assert damaged.stderr.rstrip().endswith("copy the damaged shards again from where this folder came from")


def test_a_curated_index_without_hashes_asks_for_a_new_assembly(curated_run, tmp_path):
    run_dir = tmp_path / "run"
    for stage in ("ingest", "curated"):
        shutil.copytree(curated_run / stage, run_dir / stage)
    index = run_dir / "curated" / "index.parquet"
    pq.write_table(pq.read_table(index).drop_columns(["sha256"]), index)
    with pytest.raises(StageError, match=r"has no sha256 column: .* re-run from curated \(--from curated\)"):
        verify_tasks(run_dir)


def assemble_into(run_dir: Path, out: Path, map_fn=serial_map, shard_size: int = 10) -> dict[str, int]:
    """The curated stage alone, over `run_dir`'s finished ingest and retrieve, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    sources = RunDir(run_dir).read_manifest()["config"]["retrieve"]["sources"]
    rows = {row["name"]: row["strategy"]["kind"] for row in sources}
    config = AssembleConfig(shard_size=shard_size)
    return run_assemble(config, run_dir / "ingest", run_dir / "retrieve", rows, out, map_fn)


def test_assembly_reads_each_curated_image_once_and_nothing_else(curated_run, tmp_path, monkeypatch):
    """Output shards are filled by reading at the offsets ingest recorded: the bytes read are the
    curated JPEGs and their tar headers, not the ingest shards they lie in (the whole pool)."""
    read = Counter()

    def counting(path):
        handle = open_input(path)
        plain_read = handle.read
        handle.read = lambda *size: read.update({str(path): len(data := plain_read(*size))}) or data
        return handle

    monkeypatch.setattr(shards, "open_input", counting)
    counts = assemble_into(curated_run, tmp_path / "curated")
    sizes = [len(sample["jpg"]) for sample in curated_samples(tmp_path)]
    assert counts["curated"] == len(sizes) and counts["shards"] == -(-len(sizes) // 10) > 3
    assert sum(read.values()) == sum(sizes) + 512 * len(sizes)
    pool_tars = sum(p.stat().st_size for p in (curated_run / "ingest").glob("*.tar"))
    assert sum(read.values()) < pool_tars / 10


@pytest.mark.parametrize("workers", [1, 3])
def test_assembly_gives_the_same_bytes_in_one_process_or_several(curated_run, tmp_path, workers):
    assemble_into(curated_run, tmp_path / "serial")
    assemble_into(curated_run, tmp_path / "processes", process_map(workers))
    assert stage_files(tmp_path, "serial") == stage_files(tmp_path, "processes")


def test_a_killed_assembly_keeps_its_finished_shards_and_ends_with_the_same_bytes(curated_run, tmp_path):
    class Killed(Exception):
        pass

    def dies_after_two(fn, tasks):
        for done, task in enumerate(tasks):
            if done == 2:
                raise Killed
            yield fn(task)

    with pytest.raises(Killed):
        assemble_into(curated_run, tmp_path / "curated", dies_after_two)
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "curated").glob("*.tar")}
    assert len(kept) == 2 and not (tmp_path / "curated" / "index.parquet").exists()
    written = []
    assemble_into(curated_run, tmp_path / "curated", lambda fn, tasks: (written.append(t) or fn(t) for t in tasks))
    assert {Path(t.out).name for t in written}.isdisjoint(kept)
    assert all((tmp_path / "curated" / name).stat().st_mtime_ns == ns for name, ns in kept.items())
    assemble_into(curated_run, tmp_path / "again" / "curated")
    assert stage_files(tmp_path, "curated") == stage_files(tmp_path / "again", "curated")


def test_an_ingest_index_without_offsets_asks_for_a_new_ingest(curated_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(curated_run, run_dir)
    index = run_dir / "ingest" / "index.parquet"
    pq.write_table(pq.read_table(index).drop_columns(["offset"]), index)
    with pytest.raises(
        StageError, match=r"index.parquet has no offset column: .* re-run from ingest \(--from ingest\)"
    ):
        assemble_into(run_dir, tmp_path / "curated")


def test_an_ingest_index_that_no_longer_matches_its_shard_stops_the_stage_naming_the_shard(curated_run, tmp_path):
    """A rewritten ingest shard whose offsets moved: the header check refuses, never copies other bytes."""
    run_dir = tmp_path / "run"
    shutil.copytree(curated_run, run_dir)
    index = pq.read_table(run_dir / "ingest" / "index.parquet")
    shifted = index.set_column(index.schema.get_field_index("offset"), "offset", pc.add(index["offset"], 512))
    pq.write_table(shifted, run_dir / "ingest" / "index.parquet")
    with pytest.raises(CorruptInput, match=r"tar .*ingest/\d{6}\.tar holds no \w+\.jpg of \d+ bytes at offset \d+"):
        assemble_into(run_dir, tmp_path / "curated")


def test_an_image_changed_on_storage_since_ingest_stops_the_stage_before_it_is_copied(curated_run, tmp_path):
    """Same size, same offset, other bytes (bit rot, a bad copy): only the recorded sha256 tells."""
    run_dir = tmp_path / "run"
    shutil.copytree(curated_run, run_dir)
    key = pq.read_table(run_dir / "curated" / "index.parquet", filters=[("collection", "==", "pool")])["key"][0]
    row = pq.read_table(run_dir / "ingest" / "index.parquet", filters=[("key", "==", key.as_py())]).to_pylist()[0]
    tar = run_dir / "ingest" / f"{row['shard']:06d}.tar"
    data = bytearray(tar.read_bytes())
    data[row["offset"] : row["offset"] + row["bytes"]] = bytes(row["bytes"])
    tar.write_bytes(bytes(data))
    with pytest.raises(CorruptInput, match=rf"{tar}: {key}\.jpg has sha256 \w+…, not the \w+… ingest recorded"):
        assemble_into(run_dir, tmp_path / "curated")
    for written in (tmp_path / "curated").glob("*.tar"):
        with tarfile.open(written) as shard:
            assert f"{key}.jpg" not in shard.getnames()


def test_a_selection_of_nothing_assembles_an_empty_index_and_no_shards(tmp_path):
    (tmp_path / "retrieve" / "row").mkdir(parents=True)
    nothing = pa.table({name: pa.array([], pa.string()) for name in ("key", "collection", "query_key")})
    pq.write_table(
        nothing.append_column("similarity", pa.array([], pa.float32())),
        tmp_path / "retrieve" / "row" / "selected.parquet",
    )
    (tmp_path / "curated").mkdir()
    config, rows = AssembleConfig(), {"row": "as_is"}
    counts = run_assemble(config, tmp_path / "ingest", tmp_path / "retrieve", rows, tmp_path / "curated", serial_map)
    assert counts == {"curated": 0, "curated.pool": 0, "curated.seed_images": 0, "shards": 0}
    assert [p.name for p in (tmp_path / "curated").iterdir()] == ["index.parquet"]
    assert pq.read_table(tmp_path / "curated" / "index.parquet").num_rows == 0
