"""Ingest from the three source kinds on the 2,000-image synthetic crawl, checked against its truth."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import ingest as ingest_stage
from curation import sources
from curation.ingest import key_numbers, key_of, list_inputs
from curation.pipeline import curate
from curation.run_config import load_curation_config
from curation.rundir import RunDir
from curation.sources import FolderSource
from foundation.errors import ConfigError, CorruptInput
from tests.ingest_checks import check_accounting, check_shards_readable, read_run


def ingest(crawl: Path, run_dir: Path, *overrides: str):
    config = load_curation_config(crawl / "curation.yaml", list(overrides))
    return curate(config, run_dir, ("ingest",), executor="local")


@pytest.fixture(scope="module")
def folder_run(crawl, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "folder"
    ingest(crawl, run_dir)
    return run_dir


def test_folder_source_accounts_for_every_file(folder_run, crawl, pool_truth):
    check_accounting(folder_run, pool_truth, lambda row: str(crawl / row["path"]))
    check_shards_readable(folder_run)


def test_oddities_are_ingested_and_faults_quarantined(folder_run, crawl, pool_truth):
    index, quarantine = read_run(folder_run)
    ingested_modes = {r["original_mode"] for r in index}
    assert {"CMYK", "I;16", "RGBA", "L", "P"} <= ingested_modes
    assert {r["reason"] for r in quarantine} == {
        "truncated",
        "not_an_image",
        "empty",
        "too_small",
        "decompression_bomb",
    }


def test_manifest_counts_add_up(folder_run, pool_truth):
    counts = RunDir(folder_run).stage_record("ingest")["counts"]
    assert counts["inputs"] == len(pool_truth) == counts["ingested"] + counts["quarantined"]
    reasons = sum(v for k, v in counts.items() if k.startswith("quarantined."))
    assert reasons == counts["quarantined"]


def test_keys_hash_the_path_below_the_source_folder_not_where_it_is_mounted(folder_run, crawl):
    index, quarantine = read_run(folder_run)
    for row in index + quarantine:
        below_crawl = Path(row["source"]).relative_to(crawl).as_posix()  # "pool/…", the source folder's name on
        assert row["key"] == key_of(below_crawl)


def test_url_source_through_img2dataset_over_loopback(served_crawl, pool_truth, tmp_path):
    run_dir = tmp_path / "urls"
    url_source = "[{kind: urls, path: urls.parquet, download: {timeout: 4, processes_count: 2, thread_count: 16}}]"
    ingest(served_crawl, run_dir, f"ingest.sources={url_source}")
    check_accounting(run_dir, pool_truth, lambda row: row["url"], over_http=True)
    check_shards_readable(run_dir)
    _, quarantine = read_run(run_dir)
    redirected = {row["url"] for row in pool_truth if row["http"] == "redirect"}
    assert redirected and not redirected & {r["source"] for r in quarantine}
    assert not list(run_dir.glob("ingest/download*")), "img2dataset's downloads are work files"


def write_tars(crawl: Path, pool_truth: list[dict], out: Path) -> dict[str, str]:
    """Pack the pool into one tar per pool folder (with json sidecars), plus unsafe members.

    Returns truth path -> expected ingest source string.
    """
    out.mkdir()
    sources = {}
    by_folder: dict[str, list[dict]] = {}
    for row in pool_truth:
        by_folder.setdefault(row["path"].split("/")[1], []).append(row)
    for folder, rows in sorted(by_folder.items()):
        tar_path = out / f"{folder}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for row in rows:
                member = Path(row["path"]).name
                tar.add(crawl / row["path"], arcname=member)
                sidecar = f'{{"url": "{row["url"]}"}}'.encode()
                info = tarfile.TarInfo(member.rsplit(".", 1)[0] + ".json")
                info.size = len(sidecar)
                tar.addfile(info, io.BytesIO(sidecar))
                sources[row["path"]] = f"{tar_path}::{member}"
    with tarfile.open(out / "zz_evil.tar", "w") as tar:
        for name in ("../escape.jpg", "/abs/escape.jpg"):
            good = crawl / pool_truth[0]["path"]
            info = tar.gettarinfo(good, arcname="x")
            info.name = name
            with good.open("rb") as handle:
                tar.addfile(info, handle)
    return sources


def test_tar_source_accounts_for_every_member_and_refuses_unsafe_ones(crawl, pool_truth, tmp_path):
    sources = write_tars(crawl, pool_truth, tmp_path / "tars")
    run_dir = tmp_path / "run"
    ingest(crawl, run_dir, f"ingest.sources=[{{kind: tar, path: {tmp_path / 'tars'}}}]")
    _, quarantine = read_run(run_dir)
    unsafe = [r for r in quarantine if r["reason"] == "unsafe_tar_member"]
    assert sorted(r["source"].split("::")[1] for r in unsafe) == ["../escape.jpg", "/abs/escape.jpg"]
    assert not (tmp_path / "escape.jpg").exists()
    check_accounting(run_dir, pool_truth, lambda row: sources[row["path"]], extra={r["source"] for r in unsafe})
    check_shards_readable(run_dir)


def test_missing_source_folder_is_a_config_error(crawl, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ingest(crawl, tmp_path / "run", f"ingest.sources=[{{kind: folder, path: {tmp_path / 'nope'}}}]")


def test_seed_and_eval_sets_are_ingested_beside_the_pool(folder_run, truth):
    counts = RunDir(folder_run).stage_record("ingest")["counts"]
    for role, prefix in (("seed", "seeds"), ("eval", "eval")):
        for name in {r["set"] for r in truth if r["role"] == role}:
            expected = sum(r["set"] == name for r in truth)
            assert counts[f"{prefix}/{name}.ingested"] == expected
            index = pq.read_table(folder_run / "ingest" / prefix / name / "index.parquet")
            assert index.num_rows == expected


def test_two_sources_that_name_the_same_input_are_refused_naming_both(tmp_path):
    """Folders of the same name give their files the same identity, so the same keys: refused
    before any work, as one line naming both files, not as images that overwrite each other."""
    for mount in ("disk1", "disk2"):
        (tmp_path / mount / "photos" / "a").mkdir(parents=True)
        for name in ("x.jpg", "y.jpg"):
            (tmp_path / mount / "photos" / "a" / name).write_bytes(b"")
    (tmp_path / "disk2" / "photos" / "a" / "z.jpg").write_bytes(b"")
    sources = [FolderSource(path=tmp_path / mount / "photos") for mount in ("disk1", "disk2")]
    first, then = (str(tmp_path / mount / "photos" / "a" / "x.jpg") for mount in ("disk1", "disk2"))
    message = f"inputs '{first}' and '{then}' have the same identity 'photos/a/x.jpg' (key {key_of('photos/a/x.jpg')})"
    with pytest.raises(CorruptInput, match=re.escape(message)):
        list_inputs(sources, 1000, tmp_path)
    assert list_inputs(sources[1:], 1000, tmp_path) == 3


def test_key_numbers_are_the_keys_hex_digits_read_as_numbers():
    identities = ["photos/a/x.jpg", "", "crawl/ü/é.jpg", "shards/000001.tar/000001/0007.jpg"]
    assert key_numbers(identities).tolist() == [int(key_of(i), 16) for i in identities]
    assert key_numbers([]).dtype == np.uint64 and len(key_numbers([])) == 0


def test_the_listing_gives_each_shard_its_sorted_inputs_in_a_row_group(tmp_path, monkeypatch):
    """The driver lists in Arrow batches and writes each source's inputs sorted, shard by shard;
    a worker reads only its own shard's row group."""
    monkeypatch.setattr(ingest_stage, "SORT_BATCH", 7)
    monkeypatch.setattr(ingest_stage, "SHARDS_PER_LISTING_FILE", 3)
    monkeypatch.setattr(sources, "ARROW_BATCH", 5)
    names = {"b_folder": 11, "a_folder": 25}  # listed in this order: sources are not sorted among themselves
    for folder, count in names.items():
        for i in np.random.default_rng(0).permutation(count):
            (tmp_path / folder / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
            (tmp_path / folder / f"d{i % 3}" / f"{i:03d}.jpg").write_bytes(b"")
    listed = list_inputs([FolderSource(path=tmp_path / folder) for folder in names], 4, tmp_path / "out")
    assert listed == 36
    shards = [ingest_stage.listed_refs(tmp_path / "out", shard) for shard in range(9)]
    assert [len(refs) for refs in shards] == [4] * 9
    identities = [ref.identity for refs in shards for ref in refs]
    expected = [f"{folder}/d{i % 3}/{i:03d}.jpg" for folder, count in names.items() for i in range(count)]
    assert identities == sorted(expected[:11]) + sorted(expected[11:])
    assert all(ref.source == str(tmp_path / ref.identity) and ref.kind == "folder" for refs in shards for ref in refs)
    files = sorted((tmp_path / "out" / "listing").glob("*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [3, 3, 3]


def test_a_shard_of_urls_whose_task_fails_is_retried_reported_and_finished_by_a_rerun(
    served_crawl, pool_truth, tmp_path, monkeypatch
):
    """img2dataset's task for the second of four shards of URLs (a list of 40, each twice, in files
    of two shards) cannot open its tar (a folder is in its way): it runs 1 + shard_retries times,
    then the stage stops with a one-line error naming its 10 URLs and the first of them. The same command, once the way is clear, downloads that shard alone and ingests
    all 40 URLs, leaving the other shards' tars as the first run wrote them."""
    ok = [row for row in pool_truth if row["http"] == "ok"][:40]
    urls = [row["url"] for row in ok]
    listed = [urls[i] for i in np.random.default_rng(0).permutation(80) % 40]  # each twice, shuffled
    pq.write_table(pa.table({"url": listed}), tmp_path / "urls.parquet")
    monkeypatch.setattr(sources, "URL_BATCH", 7)  # sorted 7 at a time: repeats straddle batches
    monkeypatch.setattr(sources, "URL_FILE_ROWS", 20)  # two shards of URLs a file for img2dataset
    url_source = (
        f"[{{kind: urls, path: {tmp_path / 'urls.parquet'}, download: {{processes_count: 1, shard_retries: 1}}}}]"
    )
    overrides = (f"ingest.sources={url_source}", "ingest.shard_size=10")
    calls, finished = [], ("00000.tar", "00002.tar", "00003.tar")
    real = sources.run_img2dataset

    def in_the_way_until_cleared(url_file: Path, output: Path, shard_size: int, options) -> None:
        (output / "00001.tar").mkdir(parents=True, exist_ok=True)
        if cleared:
            (output / "00001.tar").rmdir()
        before = [(output / name).stat().st_mtime_ns for name in finished if (output / name).exists()]
        real(url_file, output, shard_size, options)
        calls.append((before, [(output / name).stat().st_mtime_ns for name in finished]))

    monkeypatch.setattr(sources, "run_img2dataset", in_the_way_until_cleared)
    cleared = False
    second_shard = re.escape(sorted(urls)[10])
    with pytest.raises(CorruptInput, match=rf"left 10 URLs .* in 1 shards \(e.g. {second_shard}\): .* failed 2 times"):
        ingest(served_crawl, tmp_path / "run", *overrides)
    assert len(calls) == 2
    cleared = True
    ingest(served_crawl, tmp_path / "run", *overrides)
    assert len(calls) == 3
    assert calls[0][0] == [] and calls[0][1] == calls[1][0] == calls[1][1] == calls[2][0] == calls[2][1]
    check_accounting(tmp_path / "run", ok, lambda row: row["url"], over_http=True)


def test_a_url_list_is_read_from_parquet_or_text_without_its_empty_entries(tmp_path):
    urls = ["http://a/1.jpg", "", None, "http://b/2.jpg"]
    pq.write_table(pa.table({"link": urls, "caption": ["x"] * 4}), tmp_path / "urls.parquet")
    (tmp_path / "urls.txt").write_text("http://a/1.jpg\n\n  http://b/2.jpg  \n")
    expected = ["http://a/1.jpg", "http://b/2.jpg"]
    assert sources.UrlSource(path=tmp_path / "urls.parquet", url_column="link")._read_urls().to_pylist() == expected
    assert sources.UrlSource(path=tmp_path / "urls.txt")._read_urls().to_pylist() == expected
    with pytest.raises(ConfigError, match=r"has no column 'url' \(columns: \['link', 'caption'\]\); set url_column"):
        sources.UrlSource(path=tmp_path / "urls.parquet")._read_urls()
