"""Dedup and decontamination on the synthetic crawl, compared with its planted truth."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.dedup import choose_kept
from curation.pipeline import curate
from curation.run_config import load_curation_config
from tests.stage_output import run_dir_with, stage_files


@pytest.fixture(scope="module")
def deduped_run(crawl, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dedup") / "run"
    curate(
        load_curation_config(crawl / "curation.yaml"),
        run_dir,
        ("ingest", "embed", "dedup", "decontam"),
        executor="local",
    )
    return run_dir


def truth_by_key(run_dir: Path, crawl: Path, pool_truth: list[dict]) -> dict[str, dict]:
    """Truth rows of the ingested pool images, by ingest key."""
    by_path = {str(crawl / r["path"]): r for r in pool_truth}
    index = pq.read_table(run_dir / "ingest" / "index.parquet", columns=["key", "source"]).to_pylist()
    return {row["key"]: by_path[row["source"]] for row in index}


def read(run_dir: Path, stage: str, table: str) -> list[dict]:
    return pq.read_table(run_dir / stage / f"{table}.parquet").to_pylist()


def test_planted_duplicates_share_a_component_and_uniques_survive(deduped_run, crawl, pool_truth):
    truth = truth_by_key(deduped_run, crawl, pool_truth)
    keep, removed = read(deduped_run, "dedup", "keep"), read(deduped_run, "dedup", "removed")
    component = {r["key"]: r["component"] for r in keep + removed}
    assert set(component) == set(truth) and len(keep) + len(removed) == len(truth)

    groups: dict[str, list[str]] = {}
    for key, row in truth.items():
        if row["dup_group"]:
            groups.setdefault(row["dup_group"], []).append(key)
    pairs = [pair for members in groups.values() for pair in combinations(members, 2)]
    together = sum(component[a] == component[b] for a, b in pairs)
    assert together / len(pairs) >= 0.99, f"{together}/{len(pairs)} planted pairs joined"

    uniques = {k for k, r in truth.items() if not r["dup_group"] and not r["leak_of"]}
    wrongly_removed = uniques & {r["key"] for r in removed}
    assert len(wrongly_removed) <= 0.002 * len(uniques), wrongly_removed
    assert len({component[k] for members in groups.values() for k in members if k in {r["key"] for r in keep}}) == len(
        groups
    )


def test_every_image_has_its_nearest_neighbour_recorded(deduped_run, crawl, pool_truth):
    threshold = load_curation_config(crawl / "curation.yaml").dedup.threshold
    nearest = {r["key"]: r for r in read(deduped_run, "dedup", "nearest")}
    removed = read(deduped_run, "dedup", "removed")
    assert list(nearest) == sorted(nearest) and set(nearest) == set(truth_by_key(deduped_run, crawl, pool_truth))
    assert all(nearest[r["key"]]["similarity"] >= threshold for r in removed), "a duplicate's neighbour is a duplicate"
    # vectors are stored as float16, so an exact copy can score a hair above 1
    assert all(r["nearest_key"] != key and -1.001 <= r["similarity"] <= 1.001 for key, r in nearest.items())
    below = [r["similarity"] for r in nearest.values() if r["similarity"] < threshold]
    assert len(below) > len(nearest) / 2, "the table shows the images the threshold keeps apart, not only edges"


def test_every_removal_names_its_kept_partner_and_the_rule_holds(deduped_run):
    keep = {r["key"]: r for r in read(deduped_run, "dedup", "keep")}
    index = {r["key"]: r["width"] * r["height"] for r in read(deduped_run, "ingest", "index")}
    for row in read(deduped_run, "dedup", "removed"):
        kept = row["kept_key"]
        assert kept in keep and keep[kept]["component"] == row["component"]
        assert index[kept] > index[row["key"]] or (index[kept] == index[row["key"]] and kept < row["key"])
        assert row["similarity"] > 0.5


def test_planted_eval_leaks_are_removed_with_their_cause(deduped_run, crawl, truth, pool_truth):
    eval_truth_key = {
        row["key"]: by_path[row["source"]]
        for by_path in [{str(crawl / r["path"]): r["key"] for r in truth if r["role"] == "eval"}]
        for part in (deduped_run / "ingest" / "eval").glob("*/index.parquet")
        for row in pq.read_table(part, columns=["key", "source"]).to_pylist()
    }
    truth = truth_by_key(deduped_run, crawl, pool_truth)
    dedup_component = {
        r["key"]: r["component"] for r in read(deduped_run, "dedup", "keep") + read(deduped_run, "dedup", "removed")
    }
    removed = read(deduped_run, "decontam", "removed")
    contaminated_components = {r["component"]: r for r in removed}
    leaks = {k: r for k, r in truth.items() if r["leak_of"]}
    caught = [k for k in leaks if dedup_component[k] in contaminated_components]
    assert len(caught) / len(leaks) >= 0.99
    for key in caught:
        hit = contaminated_components[dedup_component[key]]
        assert eval_truth_key[hit["eval_key"]] == leaks[key]["leak_of"] and hit["similarity"] >= 0.92
    leaky_components = {dedup_component[k] for k in leaks}
    assert all(r["component"] in leaky_components for r in removed), "a component without a leak was dropped"
    keep = {r["key"] for r in read(deduped_run, "decontam", "keep")}
    assert len(keep) + len(removed) == len(read(deduped_run, "dedup", "keep"))


def test_exact_and_ivf_pq_keep_the_same_images(deduped_run, crawl, tmp_path):
    run_dir = run_dir_with(deduped_run, tmp_path / "ivfpq", ("ingest", "embed"))
    config = load_curation_config(crawl / "curation.yaml", ["dedup.index={kind: ivf_pq, nlist: 16, nprobe: 8}"])
    curate(config, run_dir, ("dedup",), executor="local")
    exact = [r["key"] for r in read(deduped_run, "dedup", "keep")]
    approximate = [r["key"] for r in read(run_dir, "dedup", "keep")]
    assert exact == approximate


def test_byte_identical_with_other_chunking_and_workers(deduped_run, crawl, tmp_path):
    run_dir = run_dir_with(deduped_run, tmp_path / "chunked", ("ingest", "embed"))
    config = load_curation_config(crawl / "curation.yaml", ["dedup.chunk_size=300", "dedup.threads=1"])
    curate(config, run_dir, ("dedup", "decontam"), executor="local")
    for stage in ("dedup", "decontam"):
        assert stage_files(run_dir, stage) == stage_files(deduped_run, stage)


def test_semdedup_mode_removes_exact_copies(deduped_run, crawl, pool_truth, tmp_path):
    from curation.dedup import DedupConfig, run_dedup
    from foundation.executors import serial_map

    config = DedupConfig(mode="semdedup", semdedup_clusters=10, semdedup_eps=0.02)
    counts = run_dedup(config, deduped_run / "ingest", deduped_run / "embed", tmp_path, serial_map)
    truth = truth_by_key(deduped_run, crawl, pool_truth)
    removed = {r["key"] for r in pq.read_table(tmp_path / "removed.parquet").to_pylist()}
    exact_copies = {k for k, r in truth.items() if r["dup_kind"] == "exact"}
    assert exact_copies <= removed | {r["key"] for r in pq.read_table(tmp_path / "keep.parquet").to_pylist()}
    groups_with_exact = {truth[k]["dup_group"] for k in exact_copies}
    assert counts["removed"] >= len(exact_copies) and len(groups_with_exact) > 0
    uniques = {k for k, r in truth.items() if not r["dup_group"] and not r["leak_of"]}
    assert len(uniques & removed) <= 0.002 * len(uniques)


def test_semdedup_compares_a_cluster_in_blocks_of_rows_and_writes_files_of_edges_with_the_same_edges(
    tmp_path, monkeypatch
):
    """Blocks of 1,000 similarities (6 rows of a ~150-image cluster, the last block short) find the
    pairs one block finds; files of 7 edges hold them in the same order; and 150 images a cluster
    by default is the 4 clusters asked for."""
    import numpy as np

    from curation import dedup
    from curation.synth.vectors import planted_vectors

    vectors = planted_vectors(600, 32)
    config = dedup.DedupConfig(mode="semdedup", semdedup_clusters=4, semdedup_eps=0.3)
    sized = config.model_copy(update={"semdedup_clusters": None})
    monkeypatch.setattr(dedup, "SEMDEDUP_CLUSTER_IMAGES", 150)
    found = []
    for products, file_rows, folder, asked in (
        (1 << 26, 1 << 20, "whole", config),
        (1000, 1 << 20, "blocks", config),
        (1000, 7, "files", config),
        (1 << 26, 1 << 20, "sized", sized),
    ):
        monkeypatch.setattr(dedup, "SEMDEDUP_PRODUCTS", products)
        monkeypatch.setattr(dedup, "EDGE_FILE_ROWS", file_rows)
        edges_dir, _ = dedup.semdedup_edges(vectors, asked, tmp_path / folder, seed=0)
        found.append(pa.concat_tables(pq.read_table(part) for part in sorted(edges_dir.glob("*.parquet"))))
    whole = found[0]
    assert whole.num_rows > 30 and all(whole.select(["src", "dst"]).equals(t.select(["src", "dst"])) for t in found)
    assert len(list((tmp_path / "files" / dedup.ROW_EDGES).glob("*.parquet"))) == -(-whole.num_rows // 7)
    src, dst = whole["src"].to_numpy(), whole["dst"].to_numpy()
    assert (src < dst).all()
    assert np.allclose(np.einsum("nd,nd->n", vectors[src], vectors[dst]), whole["similarity"].to_numpy(), atol=1e-5)


def test_semdedup_passes_over_the_empty_clusters_of_a_pool_of_copies(tmp_path):
    """300 copies of one photo and 3 of another leave k-means 3 empty clusters of 5: every pair of
    copies is an edge, and no pair across the two photos."""
    from curation import dedup

    vectors = np.zeros((303, 16), np.float32)
    vectors[:, 0] = 1
    vectors[:3, 1] = 0.5
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = dedup.DedupConfig(mode="semdedup", semdedup_clusters=5, semdedup_eps=0.01)
    edges_dir, _ = dedup.semdedup_edges(vectors, config, tmp_path, seed=0)
    edges = pa.concat_tables(pq.read_table(part) for part in sorted(edges_dir.glob("*.parquet")))
    pairs = set(zip(edges["src"].to_pylist(), edges["dst"].to_pylist(), strict=True))
    assert pairs == {(a, b) for a in range(303) for b in range(a + 1, 303) if (a < 3) == (b < 3)}


def test_the_kept_image_is_the_largest_then_the_smallest_key_of_its_component():
    """The numpy keep rule against its plain statement, on components with ties in size."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 300, 5000)
    preference = rng.integers(0, 4, 5000)  # many ties: the key decides
    keys = [f"{key:08x}" for key in rng.permutation(10**6)[:5000]]
    by_key = np.array(sorted(range(len(keys)), key=keys.__getitem__))
    kept = choose_kept(labels, by_key, preference)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        best = min(rows, key=lambda r: (-preference[r], keys[r]))
        assert np.all(kept[rows] == best), label
    assert len(choose_kept(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0))) == 0


def random_graph(rng: np.random.Generator, n: int, edges: int) -> np.ndarray:
    """`edges` random undirected edges over `n` rows (no self-loops), packed src·n + dst with src < dst."""
    src, dst = rng.integers(0, n, (2, edges))
    src, dst = src[src != dst], dst[src != dst]
    return np.minimum(src, dst).astype(np.int64) * n + np.maximum(src, dst)


def scipy_components(n: int, pairs: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs // n, pairs % n)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


@pytest.mark.parametrize("batch", [1, 7, 1 << 20])
def test_union_find_components_equal_scipy_labels_in_any_batches(batch, monkeypatch):
    """Random graphs, a hub (every row's only edge goes to the last row: one batch joins them all),
    a chain visited from its far end, and no edges at all: labels and numbering as scipy gives them."""
    from curation import dedup

    monkeypatch.setattr(dedup, "EDGE_BATCH", batch)
    rng = np.random.default_rng(batch)
    n = 400
    graphs = [np.unique(random_graph(rng, n, edges)) for edges in (50, 300, 2000)]
    graphs.append(np.arange(n - 1, dtype=np.int64) * n + (n - 1))  # hub
    chain = rng.permutation(n)
    graphs.append(np.sort(np.minimum(chain[:-1], chain[1:]) * n + np.maximum(chain[:-1], chain[1:])))
    graphs.append(np.zeros(0, np.int64))
    for pairs in graphs:
        labels = dedup.components_of(n, pairs)
        assert labels.dtype == np.int32 and np.array_equal(labels, scipy_components(n, pairs))
    assert len(dedup.components_of(0, np.zeros(0, np.int64))) == 0


@pytest.mark.parametrize("batch", [1, 5, 1 << 20])
def test_edge_files_merge_into_each_edge_once_sorted(batch, tmp_path, monkeypatch):
    """Work files holding an edge twice (found from both ends), repeats across batch boundaries."""
    import pyarrow as pa

    from curation import dedup

    monkeypatch.setattr(dedup, "EDGE_BATCH", batch)
    rng, n = np.random.default_rng(3), 300
    found = [random_graph(rng, n, size) for size in (0, 40, 400, 400)]
    found.append(found[2][::3])  # the same edges again, in another file
    for number, pairs in enumerate(found):
        table = pa.table({"src": pairs // n, "dst": pairs % n, "similarity": np.ones(len(pairs), np.float32)})
        pq.write_table(table, tmp_path / f"{number:012d}.parquet")
    assert np.array_equal(dedup.unique_edges(n, tmp_path), np.unique(np.concatenate(found)))


def test_the_graph_steps_hold_a_batch_of_edges_not_the_graph(tmp_path, monkeypatch):
    """numpy's allocations, traced, while 2M edges are merged and labelled in batches of 16K: beyond
    the packed edges (8 bytes each) and a few arrays an image, under 3 bytes an edge (scipy's whole
    graph alone took ~25)."""
    import tracemalloc

    import pyarrow as pa

    from curation import dedup

    monkeypatch.setattr(dedup, "EDGE_BATCH", 1 << 14)
    rng, n, edges = np.random.default_rng(4), 50_000, 2_000_000
    pairs = np.sort(random_graph(rng, n, edges))
    for part in range(4):
        block = pairs[part::4]
        pq.write_table(pa.table({"src": block // n, "dst": block % n}), tmp_path / f"{part:012d}.parquet")
    del block
    tracemalloc.start()
    merged = dedup.unique_edges(n, tmp_path)
    labels = dedup.components_of(n, merged)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(labels, scipy_components(n, merged))
    beyond = peak - merged.nbytes - 24 * n
    assert beyond < 3 * len(merged), f"{beyond / len(merged):.1f} bytes an edge beyond the edges themselves"


def test_decontam_keeps_a_components_most_similar_hit_and_of_equals_the_first_found():
    from curation.decontam import HITS_SCHEMA, _closest_per_component

    hits = pa.table(
        {
            "component": [7, 3, 7, 3, 7, 5],
            "similarity": [0.5, 0.9, 0.8, 0.9, 0.8, 0.6],
            "eval_set": ["a", "a", "a", "b", "b", "b"],
            "eval_key": ["e0", "e1", "e2", "e3", "e4", "e5"],
            "via_row": [0, 1, 2, 3, 4, 5],
        },
        schema=HITS_SCHEMA,
    )
    closest = _closest_per_component(hits)
    assert closest["component"].to_pylist() == [3, 5, 7]
    assert closest["eval_key"].to_pylist() == ["e1", "e5", "e2"]
