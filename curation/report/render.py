"""Turn a run directory into RUN/report/stats.json and RUN/report/index.html (one offline file).

Everything the page shows is embedded: plots as PNG data URIs, thumbnails as JPEG data URIs, no
scripts, no external requests. Grids are capped (largest components, a few queries per source
row, a few contamination hits) so the page stays small whatever the run's size.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.report.gallery import Thumbnails
from curation.report.stats import collect_stats
from foundation.report import figures
from foundation.report.page import write_page

DUPLICATE_GROUPS, DUPLICATES_PER_GROUP = 6, 7
QUERIES_PER_ROW, NEIGHBOURS_PER_QUERY = 3, 6
DECONTAM_HITS = 8


def _read(paths: list[Path], columns: list[str]) -> pa.Table:
    tables = [pq.read_table(p, columns=columns) for p in paths if p.exists()]
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in columns})


def make_plots(root: Path, stats: dict[str, Any]) -> dict[str, str]:
    index = pq.read_table(root / "ingest" / "index.parquet", columns=["width", "height", "bytes"])
    width, height = index["width"].to_numpy(), index["height"].to_numpy()
    edges = _read(sorted((root / "dedup" / "edges").glob("*.parquet")), ["similarity"])
    removed = _read([root / "decontam" / "removed.parquet"], ["similarity"])
    selected = {
        row["name"]: _read([root / "retrieve" / row["name"] / "selected.parquet"], ["query_key", "similarity"])
        for row in stats["sources"]
    }
    cluster_sizes = _cluster_sizes(selected.values())
    sizes = stats["dedup"]["component_sizes"]
    plots = {
        "funnel": figures.bars(
            [r["step"] for r in stats["funnel"]], [r["images"] for r in stats["funnel"]], "Funnel", "images", log=True
        ),
        "component sizes": figures.bars(list(sizes), list(sizes.values()), "Duplicate component sizes", "components"),
        "dedup similarity": figures.histogram(
            np.asarray(edges["similarity"].to_numpy(zero_copy_only=False), float),
            "kNN-graph edge similarity",
            "cosine",
            threshold=stats["dedup"]["threshold"],
            log=True,
            ylabel="edges",
        ),
        "decontam similarity": figures.histogram(
            np.asarray(removed["similarity"].to_numpy(zero_copy_only=False), float),
            "Pool image to eval image similarity (dropped)",
            "cosine",
            threshold=stats["decontam"]["threshold"],
        ),
        "retrieval similarity": figures.boxes(
            {name: np.asarray(t["similarity"].to_numpy(zero_copy_only=False), float) for name, t in selected.items()},
            "Retrieval similarity per source row",
            "cosine",
        ),
        "width": figures.histogram(width, "Width", "pixels"),
        "height": figures.histogram(height, "Height", "pixels"),
        "aspect": figures.histogram(width / np.maximum(height, 1), "Aspect ratio", "width / height"),
        "bytes": figures.histogram(index["bytes"].to_numpy() / 1024, "Stored size", "KiB"),
    }
    nearest = _read([root / "dedup" / "nearest.parquet"], ["similarity"])
    if nearest.num_rows:  # knn-mode dedup: where the threshold cuts the whole pool, not just the edges kept
        values = np.asarray(nearest["similarity"].to_numpy(zero_copy_only=False), float)
        plots["nearest similarity"] = figures.histogram(
            values[np.isfinite(values)],
            "Nearest-neighbour similarity, every pool image",
            "cosine",
            threshold=stats["dedup"]["threshold"],
            log=True,
            ylabel="images",
        )
    if cluster_sizes:
        counts = sorted(cluster_sizes, reverse=True)
        plots["cluster sizes"] = figures.bars(
            [str(i) for i in range(len(counts))], counts, "Images per retrieved cluster", "images"
        )
    return plots


def _cluster_sizes(selected: Iterable[pa.Table]) -> list[int]:
    """Images per retrieved cluster (query keys `cluster:<id>`), counted in Arrow."""
    query_keys = pa.chunked_array([table["query_key"].cast(pa.string()) for table in selected], pa.string())
    clusters = query_keys.filter(pc.starts_with(query_keys, "cluster:"))
    return pc.value_counts(clusters).field("counts").to_pylist() if len(clusters) else []


def _image(uri_of: dict[str, str], key: str, caption: str) -> dict[str, str] | None:
    return {"key": key, "uri": uri_of[key], "caption": caption} if key in uri_of else None


def _groups(rows: list[list[tuple[Thumbnails, str, str]]]) -> list[list[dict[str, str]]]:
    """Rows of (collection, key, caption) → rows of images, reading every thumbnail once."""
    wanted: dict[Thumbnails, list[str]] = {}
    for row in rows:
        for collection, key, _ in row:
            wanted.setdefault(collection, []).append(key)
    uris = {id(c): c.get(keys) for c, keys in wanted.items()}
    return [[img for c, key, cap in row if (img := _image(uris[id(c)], key, cap))] for row in rows]


def make_grids(root: Path, stats: dict[str, Any]) -> dict[str, Any]:
    ingest = root / "ingest"
    pool = Thumbnails(ingest)

    duplicates = [
        [(pool, kept, "kept")] + [(pool, r["key"], f"{r['similarity']:.3f}") for r in removed]
        for kept, removed in _largest_duplicate_groups(root / "dedup" / "removed.parquet")
    ]

    retrieval = []
    for row in stats["sources"]:
        path = root / "retrieve" / row["name"] / "selected.parquet"
        if row["strategy"] == "as_is" or not path.exists():
            continue
        seeds = Thumbnails(ingest / "seeds" / row["name"])
        groups = [
            ([] if query.startswith("cluster:") else [(seeds, query, "query")])
            + [(pool, r["key"], f"{r['similarity']:.3f}") for r in best]
            for query, best in _first_queries(path)
        ]
        retrieval.append({"name": row["name"], "strategy": row["strategy"], "groups": _groups(groups)})

    hits = _closest_hits(root / "decontam" / "removed.parquet")
    evals = {name: Thumbnails(ingest / "eval" / name) for name in {h["eval_set"] for h in hits}}
    decontam = [
        [(evals[h["eval_set"]], h["eval_key"], h["eval_set"]), (pool, h["key"], f"{h['similarity']:.3f}")] for h in hits
    ]

    return {"duplicates": _groups(duplicates), "retrieval": retrieval, "decontam": _groups(decontam)}


def _largest_duplicate_groups(removed_path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """The DUPLICATE_GROUPS kept images with the most duplicates (ties: smaller key first), each with
    its first DUPLICATES_PER_GROUP duplicates by key; grouped in Arrow, since the pool's removed
    images run to hundreds of millions at the paper's scale."""
    removed = pq.read_table(removed_path, columns=["key", "kept_key", "similarity"])
    counts = removed.group_by("kept_key").aggregate([("key", "count")])
    largest = counts.sort_by([("key_count", "descending"), ("kept_key", "ascending")])["kept_key"][:DUPLICATE_GROUPS]
    return _first_rows(removed, "kept_key", largest.combine_chunks(), [("key", "ascending")], DUPLICATES_PER_GROUP)


def _first_queries(selected_path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """The QUERIES_PER_ROW first query keys of a source row, each with its NEIGHBOURS_PER_QUERY most
    similar selections (of equals, the first in key order)."""
    selected = pq.read_table(selected_path, columns=["key", "query_key", "similarity"])
    queries = pc.unique(selected["query_key"])
    queries = queries.take(pc.sort_indices(queries))[:QUERIES_PER_ROW]
    order = [("similarity", "descending"), ("key", "ascending")]
    return _first_rows(selected, "query_key", queries, order, NEIGHBOURS_PER_QUERY)


def _first_rows(
    table: pa.Table, column: str, values: pa.Array, order: list[tuple[str, str]], limit: int
) -> list[tuple[str, list[dict[str, Any]]]]:
    """For each of `values`, in their order, its first `limit` rows of `table` (where `column` holds
    it) by `order`: only those values' rows become Python objects."""
    chosen = table.filter(pc.is_in(table[column], value_set=values)).sort_by(order)
    grouped: dict[str, list[dict[str, Any]]] = {value: [] for value in values.to_pylist()}
    for row in chosen.to_pylist():
        grouped[row[column]].append(row)
    return [(value, rows[:limit]) for value, rows in grouped.items()]


def _closest_hits(removed_path: Path) -> list[dict[str, Any]]:
    """The DECONTAM_HITS most similar contaminated images (of equals, the smaller key first), the
    best of each batch of the file kept as it is read: the whole table is hundreds of millions of rows."""
    order = [("similarity", "descending"), ("key", "ascending")]
    removed = pq.ParquetFile(removed_path)
    best = [batch.take(pc.select_k_unstable(batch, DECONTAM_HITS, order)) for batch in removed.iter_batches()]
    return pa.Table.from_batches(best, removed.schema_arrow).sort_by(order)[:DECONTAM_HITS].to_pylist()


def write_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Write stats.json and index.html into `out_dir` (default RUN/report); return the stats."""
    root = Path(run_dir)
    out = out_dir or root / "report"
    out.mkdir(parents=True, exist_ok=True)
    stats = collect_stats(root)
    write_page(
        out,
        __package__,
        "curation.html.j2",
        stats,
        title=f"Curation report: {stats['run']['name']}",
        subtitle=f"config {stats['run']['config_hash'][:12]}",
        plots=make_plots(root, stats),
        grids=make_grids(root, stats),
    )
    return stats
