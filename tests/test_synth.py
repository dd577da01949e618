"""The synthetic crawl: deterministic, its truth consistent with the files, its server misbehaving as recorded."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.synth.crawl import BROKEN_KINDS, ODDITIES, make_crawl
from curation.synth.server import serve_in_background
from tests.conftest import free_port


def test_same_seed_same_bytes(tmp_path):
    a = make_crawl(tmp_path / "a", images=120, seed=3)
    b = make_crawl(tmp_path / "b", images=120, seed=3)
    files_a = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file()}
    files_b = {p.relative_to(b): p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}
    assert files_a == files_b
    assert (tmp_path / "a" / "truth.parquet").read_bytes() != make_crawl(tmp_path / "c", 120, seed=4).joinpath(
        "truth.parquet"
    ).read_bytes()


def test_truth_plants_every_case(pool_truth, truth):
    assert len(pool_truth) == 2000
    broken = Counter(r["broken_reason"] for r in pool_truth if r["broken_reason"])
    assert set(broken) == {*BROKEN_KINDS, "decompression_bomb"} and broken["decompression_bomb"] == 1
    assert {r["oddity"] for r in pool_truth if r["oddity"]} == set(ODDITIES)
    groups = Counter(r["dup_group"] for r in pool_truth if r["dup_group"])
    assert groups and min(groups.values()) >= 2
    assert all(sum(r["dup_kind"] == "original" for r in pool_truth if r["dup_group"] == g) == 1 for g in groups)
    eval_keys = {r["key"] for r in truth if r["role"] == "eval"}
    leaks = [r for r in pool_truth if r["leak_of"]]
    assert len(leaks) >= 4 and {r["leak_of"] for r in leaks} <= eval_keys
    assert {r["set"] for r in truth if r["role"] == "seed"} == {"seed_cat", "seed_stripes", "seed_landscape"}
    assert {"404", "500", "slow", "redirect"} <= {r["http"] for r in pool_truth}


def test_truth_sizes_match_the_files(crawl, pool_truth):
    for row in pool_truth[::37]:
        if row["broken_reason"] is None:
            with Image.open(crawl / row["path"]) as image:
                size = image.size[::-1] if row["oddity"] == "exif_rotated" else image.size
            assert size == (row["width"], row["height"])


def test_concepts_cover_procedural_and_photo_scenes(pool_truth):
    concepts = Counter(r["concept"] for r in pool_truth if r["concept"])
    assert {"stripes", "checkerboard", "bubbles", "landscape", "clouds", "cat", "coffee"} <= set(concepts)


def test_server_answers_as_truth_says(tmp_path):
    port = free_port()
    crawl = make_crawl(tmp_path / "c", images=200, seed=1, base_url=f"http://127.0.0.1:{port}")
    rows = pq.read_table(crawl / "truth.parquet").to_pylist()
    by_http = {r["http"]: r for r in rows if r["role"] == "pool"}
    server = serve_in_background(crawl)
    try:
        with urllib.request.urlopen(by_http["ok"]["url"], timeout=5) as response:
            assert response.read() == (crawl / by_http["ok"]["path"]).read_bytes()
        with urllib.request.urlopen(by_http["redirect"]["url"], timeout=5) as response:
            assert "/direct/" in response.geturl()
            Image.open(io.BytesIO(response.read())).load()
        for status in ("404", "500"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(by_http[status]["url"], timeout=5)
            assert err.value.code == int(status)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            urllib.request.urlopen(by_http["slow"]["url"], timeout=0.5).read()
        assert time.monotonic() - started < 3
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/direct/../truth.parquet", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
