"""Retrieve's selection rules in numpy and Arrow, against their plain statements."""

from __future__ import annotations

import numpy as np

from curation import retrieve


def test_each_pool_row_is_taken_for_its_most_similar_hit_and_of_equals_the_first():
    """5,000 hits on 400 pool rows with similarities drawn from four values, so that most rows have ties."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 400, 5000)
    similarity = rng.choice(np.array([0.1, 0.2, 0.3, 0.4], np.float32), 5000)
    best: dict[int, int] = {}
    for hit, (row, sim) in enumerate(zip(rows.tolist(), similarity.tolist(), strict=True)):
        if row not in best or sim > similarity[best[row]]:
            best[row] = hit
    chosen = retrieve.best_hits(rows, similarity)
    assert chosen.tolist() == [best[row] for row in sorted(best)]
    assert len(retrieve.best_hits(np.zeros(0, np.int64), np.zeros(0, np.float32))) == 0


def test_queries_find_their_cluster_in_blocks_as_all_at_once(monkeypatch):
    """Blocks of 3 queries (the last one short) against 50 centroids, with planted exact ties."""
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((50, 16)).astype(np.float32)
    centroids[7] = centroids[3]  # a tie: the smaller cluster wins, whatever the block
    queries = np.concatenate([rng.standard_normal((40, 16)).astype(np.float32), centroids[[3, 3]]])
    clusters = retrieve.PoolClusters(centroids, np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    whole = clusters.nearest(queries)
    monkeypatch.setattr(retrieve, "NEAREST_BLOCK", 3 * len(centroids))
    assert np.array_equal(clusters.nearest(queries), whole)
    assert whole[-1] == 3 and len(clusters.nearest(queries[:0])) == 0


def test_an_empty_selection_writes_an_empty_table_of_the_schema():
    table = retrieve.Selection.empty(12, "empty pool").table()
    assert table.schema == retrieve.SELECTION_SCHEMA and table.num_rows == 0
