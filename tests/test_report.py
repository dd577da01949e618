"""`lvd report` / `lvd stats` on a real curation run of a small synthetic crawl, checked against its files.

The browser test renders the page in headless Chromium (system package; `.ci/run` installs it)
through Playwright and is skipped, with the reason, only when no Chromium is on the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.synth.crawl import make_crawl
from foundation.errors import LvdError
from tests.stage_output import curate_command
from tests.train_fixtures import tiny_train_tree, write_concept_shards
from training.report import write_training_report


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    crawl = make_crawl(tmp_path_factory.mktemp("crawl") / "crawl", images=400, seed=3)
    run_dir = tmp_path_factory.mktemp("run") / "run"
    done = subprocess.run(curate_command(crawl / "curation.yaml", run_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def _keys(path: Path) -> list[str]:
    return pq.read_table(path, columns=["key"])["key"].to_pylist()


def _stats(run: Path) -> dict:
    return json.loads((run / "report" / "stats.json").read_text())


def test_every_input_is_in_exactly_one_final_bucket(run):
    stats = _stats(run)
    quarantined = set(_keys(run / "ingest" / "quarantine.parquet"))
    duplicate = set(_keys(run / "dedup" / "removed.parquet"))
    contaminated = set(_keys(run / "decontam" / "removed.parquet"))
    index = pq.read_table(run / "curated" / "index.parquet", columns=["key", "collection"]).to_pylist()
    curated = {r["key"] for r in index if r["collection"] == "pool"}
    inputs = set(_keys(run / "ingest" / "index.parquet")) | quarantined
    not_retrieved = inputs - quarantined - duplicate - contaminated - curated
    buckets = {
        "curated": curated,
        "not_retrieved": not_retrieved,
        "contaminated": contaminated,
        "duplicate": duplicate,
        "quarantined": quarantined,
    }
    assert sum(len(b) for b in buckets.values()) == len(inputs) == stats["inputs"] == 400
    assert {name: len(keys) for name, keys in buckets.items()} == stats["fates"]


def test_page_numbers_equal_stats_json_and_the_manifest(run):
    stats = _stats(run)
    html = (run / "report" / "index.html").read_text()
    shown = dict(re.findall(r'data-stat="([^"]+)">([^<]*)<', html))
    assert len(shown) >= 20
    for path, text in shown.items():
        value = stats
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        assert str(value) == text, path
    manifest = json.loads((run / "manifest.json").read_text())
    assert stats["fates"]["duplicate"] == manifest["stages"]["dedup"]["counts"]["removed"]
    assert stats["funnel"][-1]["images"] == manifest["stages"]["curated"]["counts"]["curated.pool"]
    assert "http://" not in html and "https://" not in html  # nothing fetched from outside


def test_report_plots_where_the_dedup_threshold_cuts_the_pool(run):
    html = (run / "report" / "index.html").read_text()
    assert 'alt="nearest similarity"' in html and 'alt="dedup similarity"' in html


def test_report_is_a_pipeline_stage_with_its_counts(run):
    record = json.loads((run / "manifest.json").read_text())["stages"]["report"]
    assert record["status"] == "done" and record["counts"]["inputs"] == 400


def test_lvd_stats_prints_the_same_numbers(run):
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "stats", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    stats = _stats(run)
    for fate, n in stats["fates"].items():
        assert re.search(rf"{fate}\s*│\s*{n}\b", done.stdout), fate


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_renders_in_headless_chromium(run):
    from playwright.sync_api import sync_playwright  # the dev extra installs it

    browser_path = _chromium()
    assert browser_path, "no Chromium on this machine: install the 'chromium' system package, as .ci/run does"
    stats = _stats(run)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page()
        errors, failed = [], []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto((run / "report" / "index.html").as_uri(), wait_until="load")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        images = page.evaluate("document.images.length")
        fates = page.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('[data-stat^=\"fates.\"]'))"
            ".map(e => [e.dataset.stat.slice(6), Number(e.textContent)]))"
        )
        browser.close()
    assert errors == [] and failed == []
    assert images >= 10 and broken == 0
    assert fates == stats["fates"]


def test_training_report_plots_a_training_run(tmp_path):
    from foundation.config import validate_tree
    from training.config import TrainConfig
    from training.train_loop import train

    shards = write_concept_shards(tmp_path / "shards", images=16)
    train(validate_tree(TrainConfig, tiny_train_tree(shards, tmp_path / "out", run={"max_steps": 3}), "t"))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "report", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "out" / "report" / "stats.json").read_text())
    assert stats["steps"] == 3 and stats["logged"] == 3
    assert (tmp_path / "out" / "report" / "index.html").read_text().count("<img") == 5


def test_reports_of_unfinished_runs_are_clear_errors(tmp_path):
    with pytest.raises(LvdError, match=r"no metrics\.jsonl"):
        write_training_report(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "report", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "manifest" in done.stderr and "Traceback" not in done.stderr
