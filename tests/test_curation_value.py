"""The curation-value benchmark's plumbing, against the crawl's truth: each variant trains on exactly
the images it names, the same-size variants are the same size, and no evaluation image (nor a near
copy of one) is in any training set. The full benchmark's figures live in benchmarks/, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.synth.crawl import COVERED, CURATION_VALUE, UNCOVERED
from pipelines.curation_value import (
    RANDOM_INIT,
    VARIANTS,
    labelled_tasks,
    members_of,
    prepare,
    run_all,
    summarise,
    table,
    write_shards,
)
from training.report import write_training_report


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("curation-value")
    crawl, run, config = prepare(work, images=400)
    return work, crawl, run, config


def _truth_of(crawl: Path, run: Path) -> dict[str, dict]:
    """Ingest key -> the crawl's truth row of the file it came from."""
    truth = {(crawl / r["path"]).resolve(): r for r in pq.read_table(crawl / "truth.parquet").to_pylist()}
    index = pq.read_table(run / "ingest" / "index.parquet", columns=["key", "source"]).to_pylist()
    return {r["key"]: truth[Path(r["source"]).resolve()] for r in index}


def test_the_crawl_makes_the_question_fair(prepared):
    _, crawl, _, _ = prepared
    truth = pq.read_table(crawl / "truth.parquet").to_pylist()
    pool = [r for r in truth if r["role"] == "pool" and r["concept"] and not r["leak_of"]]
    covered = sum(r["concept"] in COVERED for r in pool) / len(pool)
    assert 0.1 <= covered <= 0.3, "the seed concepts must be a minority of the pool"
    copies = sum(r["dup_kind"] not in (None, "original") for r in truth if r["role"] == "pool")
    assert copies / sum(r["role"] == "pool" for r in truth) == pytest.approx(CURATION_VALUE.copy_fraction, abs=0.01)
    evaluated = {r["concept"] for r in truth if r["role"] == "eval"}
    assert evaluated == set(COVERED) | set(UNCOVERED)
    tasks = labelled_tasks(crawl)
    assert {len(set(t.train_labels.tolist())) for t in tasks.values()} == {len(COVERED), len(UNCOVERED)}


def test_variants_name_their_images_and_hold_no_evaluation_image(prepared, tmp_path):
    _, crawl, run, config = prepared
    truth = _truth_of(crawl, run)
    sizes = {}
    for variant in VARIANTS:
        members = members_of(variant, run, config, seed=1)
        sizes[variant] = len(members)
        assert len(set(members)) == len(members), variant
        leaked = [truth[key]["leak_of"] for _, key in members if truth[key]["leak_of"]]
        assert not leaked, f"{variant} trains on near copies of evaluation images {leaked}"
        out = tmp_path / variant
        write_shards(run / "ingest", members, out)
        written = [
            s["__key__"] for tar in sorted(out.glob("*.tar")) for s in wds.WebDataset(str(tar), shardshuffle=False)
        ]
        assert sorted(written) == sorted(key for _, key in members), f"{variant} shards hold other images"
    assert sizes["curated"] == sizes["random"] == sizes["balanced"] > 0
    dedup_removed = pq.read_table(run / "dedup" / "removed.parquet").num_rows
    assert sizes["deduplicated"] < sizes["raw"] <= sizes["deduplicated"] + dedup_removed
    assert members_of("random", run, config, 1) != members_of("random", run, config, 2), "a seed draws the sample"


def test_curated_set_concentrates_on_the_covered_concepts(prepared):
    _, crawl, run, config = prepared
    truth = _truth_of(crawl, run)

    def share(variant: str) -> float:
        members = members_of(variant, run, config, seed=0)
        return sum(truth[key]["concept"] in COVERED for _, key in members) / len(members)

    assert share("curated") >= 2 * share("random"), "retrieval from the seed sets must favour their concepts"


def test_one_variant_end_to_end(prepared):
    work, *_ = prepared
    rows = run_all(work, images=400, seeds=1, scale=0.1, variants=("curated",), workers=0)
    assert [r.variant for r in rows] == ["curated", RANDOM_INIT]
    assert rows[0].steps == 20  # scale 0.1 of 5 epochs rounds up to one epoch of 20 steps and rows[0].images > 0
    assert set(rows[0].scores) == {"covered.knn", "covered.linear", "uncovered.knn", "uncovered.linear"}
    assert all(0.0 <= v <= 1.0 for r in rows for v in r.scores.values())
    saved = json.loads((work / "results.json").read_text())
    assert [r["variant"] for r in saved] == ["curated", RANDOM_INIT]
    train_dir = work / "20-steps" / "curated" / "seed0" / "train"
    evaluation = json.loads((train_dir / "evaluation.json").read_text())
    assert evaluation["top-1 covered.knn"] == rows[0].scores["covered.knn"]
    report = write_training_report(train_dir)
    assert report["evaluation"]["trained on"] == "curated"
    assert 'id="evaluation"' in (train_dir / "report" / "index.html").read_text()
    again = run_all(work, images=400, seeds=1, scale=0.1, variants=("curated",), workers=0)
    assert again == rows, "a finished run is read back, not trained again"
    assert "| curated |" in table(summarise(rows))
