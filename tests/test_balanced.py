"""Balanced sampling from hierarchical k-means: even concepts from a long-tailed pool, and as a source row."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from curation import knn
from curation.balanced import balanced_sample, fit_tree, nearest_points, share
from curation.knn import Members
from curation.pipeline import curate
from curation.run_config import CurationConfig
from curation.synth.crawl import make_crawl
from foundation.config import validate_tree
from foundation.errors import ConfigError

SIZES = [4000, 800, 160, 60, 30]  # a long tail: the first concept is 79% of the pool


def _long_tailed(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SIZES), 32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(SIZES)), SIZES)
    vectors = (centres[labels] + 0.06 * rng.normal(size=(len(labels), 32))).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


def test_share_is_even_and_gives_what_a_small_group_cannot_take_to_the_others():
    assert share(np.array([30, 4000, 800, 160, 60]), 250).tolist() == [30, 55, 55, 55, 55]
    assert share(np.array([3, 3]), 100).tolist() == [3, 3]
    assert share(np.array([10, 10, 10]), 7).sum() == 7


def test_balanced_sample_evens_out_a_long_tail_that_random_sampling_keeps():
    vectors, labels = _long_tailed()
    tree = fit_tree(vectors, [50, 15, 5], iterations=20, steps=3, per_cluster=5, seed=0)
    chosen = balanced_sample(tree, 250, np.random.default_rng(0))
    counts = np.bincount(labels[chosen], minlength=len(SIZES))
    random_counts = np.bincount(labels[np.random.default_rng(0).choice(len(labels), 250, replace=False)], minlength=5)
    assert len(chosen) == len(set(chosen.tolist())) == 250
    assert counts[-1] == SIZES[-1]  # the rarest concept is taken whole
    assert counts.max() <= 2 * 250 / len(SIZES)  # no concept gets more than twice an even share
    assert random_counts.max() > 0.7 * 250 and random_counts[-2:].sum() <= 5  # what random does instead


def test_nearest_points_in_blocks_are_one_flat_search_of_every_point(monkeypatch):
    rng = np.random.default_rng(1)
    points, centroids = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(9, 16)).astype(np.float32)
    _, rows = faiss.knn(centroids, points, 5, metric=faiss.METRIC_INNER_PRODUCT)
    expected = np.unique(rows)
    for batch in (7, 100, 250, 1 << 18):
        monkeypatch.setattr(knn, "ADD_BATCH", batch)
        assert np.array_equal(nearest_points(points, centroids, 5), expected), batch


def test_a_tree_over_a_memory_mapped_pool_read_in_blocks_is_the_tree_in_memory(monkeypatch, tmp_path):
    vectors, _ = _long_tailed()
    in_memory = fit_tree(vectors, [50, 15, 5], iterations=20, steps=3, per_cluster=5, seed=0)
    np.save(tmp_path / "pool.npy", vectors)
    monkeypatch.setattr(knn, "ADD_BATCH", 512)  # 10 blocks
    mapped = fit_tree(np.load(tmp_path / "pool.npy", mmap_mode="r"), [50, 15, 5], 20, 3, 5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(in_memory.parents, mapped.parents, strict=True))
    assert np.array_equal(in_memory.leaf_similarity, mapped.leaf_similarity)
    leaves = in_memory.leaf_centroids[in_memory.parents[0]]
    assert np.allclose(in_memory.leaf_similarity, np.einsum("nd,nd->n", vectors, leaves), atol=1e-6)


def test_members_are_each_groups_rows_in_order():
    labels = np.random.default_rng(2).integers(0, 40, size=3000).astype(np.int32)
    members = Members.of(labels, 45)  # five groups empty
    for group in range(45):
        assert np.array_equal(members[group], np.flatnonzero(labels == group))
    assert members.counts.sum() == len(labels)


def test_levels_must_shrink():
    tree = {"ingest": {"sources": [{"kind": "folder", "path": "."}]}}
    tree["retrieve"] = {"sources": [{"name": "web", "strategy": {"kind": "balanced", "images": 5, "levels": [4, 8]}}]}
    with pytest.raises(ConfigError, match="strictly decreasing"):
        validate_tree(CurationConfig, tree, "test")


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory):
    crawl = make_crawl(tmp_path_factory.mktemp("crawl") / "crawl", images=400, seed=5)
    tree = yaml.safe_load((crawl / "curation.yaml").read_text())
    tree["retrieve"]["sources"].append(
        {"name": "web_balanced", "strategy": {"kind": "balanced", "images": 40, "levels": [20, 5]}}
    )
    config = validate_tree(CurationConfig, tree, "test", base_dir=crawl)
    run = curate(config, tmp_path_factory.mktemp("run") / "run", executor="local")
    return run.root


def test_a_balanced_row_needs_no_seed_set_and_is_assembled_with_its_lineage(balanced_run):
    rows = json.loads((balanced_run / "retrieve" / "rows.json").read_text())
    assert rows["web_balanced"] == {
        "strategy": "balanced",
        "queries": 0,
        "target": 40,
        "retrieved": 40,
        "shortfall": 0,
        "cause": "",
        "paper": None,
    }
    selected = pq.read_table(balanced_run / "retrieve" / "web_balanced" / "selected.parquet").to_pylist()
    assert all(r["query_key"].startswith("cluster:") and r["collection"] == "pool" for r in selected)
    index = pq.read_table(balanced_run / "curated" / "index.parquet").to_pylist()
    balanced_keys = {r["key"] for r in index if "web_balanced" in r["seed_sets"]}
    assert balanced_keys == {r["key"] for r in selected}


def test_sample_rows_search_in_chunks_with_the_same_result(balanced_run, tmp_path):
    """`sample` queries run as map tasks over saved-index chunks; the chunking must not change the output."""
    from tests.stage_output import run_dir_with, stage_files

    tree = json.loads((balanced_run / "manifest.json").read_text())["config"]
    tree["retrieve"]["chunk_size"] = 3  # seed_stripes' 10 queries as 4 search tasks
    config = validate_tree(CurationConfig, tree, "test")
    rerun = run_dir_with(balanced_run, tmp_path / "rerun", ("ingest", "embed", "dedup", "decontam"))
    curate(config, rerun, ("retrieve",), start_from="retrieve", executor="local")
    assert stage_files(rerun, "retrieve") == stage_files(balanced_run, "retrieve")
    assert not (rerun / "retrieve" / "search").exists()  # work files are gone
