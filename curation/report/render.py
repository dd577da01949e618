"""Turn a run directory into RUN/report/stats.json and RUN/report/index.html (one offline file).

Everything the page shows is embedded: plots as PNG data URIs, thumbnails as JPEG data URIs, no
scripts, no external requests. Grids are capped (largest components, a few queries per source
row, a few contamination hits) so the page stays small whatever the run's size.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
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
    cluster_sizes = Counter(
        q for table in selected.values() for q in table["query_key"].to_pylist() if str(q).startswith("cluster:")
    )
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
        counts = sorted(cluster_sizes.values(), reverse=True)
        plots["cluster sizes"] = figures.bars(
            [str(i) for i in range(len(counts))], counts, "Images per retrieved cluster", "images"
        )
    return plots


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

    removed = pq.read_table(root / "dedup" / "removed.parquet", columns=["key", "kept_key", "similarity"]).to_pylist()
    by_kept: dict[str, list[dict]] = {}
    for row in removed:
        by_kept.setdefault(row["kept_key"], []).append(row)
    largest = sorted(by_kept, key=lambda k: (-len(by_kept[k]), k))[:DUPLICATE_GROUPS]
    duplicates = [
        [(pool, kept, "kept")]
        + [
            (pool, r["key"], f"{r['similarity']:.3f}")
            for r in sorted(by_kept[kept], key=lambda r: r["key"])[:DUPLICATES_PER_GROUP]
        ]
        for kept in largest
    ]

    retrieval = []
    for row in stats["sources"]:
        path = root / "retrieve" / row["name"] / "selected.parquet"
        if row["strategy"] == "as_is" or not path.exists():
            continue
        seeds = Thumbnails(ingest / "seeds" / row["name"])
        by_query: dict[str, list[dict]] = {}
        for r in pq.read_table(path).to_pylist():
            by_query.setdefault(r["query_key"], []).append(r)
        groups = []
        for query in sorted(by_query)[:QUERIES_PER_ROW]:
            best = sorted(by_query[query], key=lambda r: -r["similarity"])[:NEIGHBOURS_PER_QUERY]
            head = [] if query.startswith("cluster:") else [(seeds, query, "query")]
            groups.append(head + [(pool, r["key"], f"{r['similarity']:.3f}") for r in best])
        retrieval.append({"name": row["name"], "strategy": row["strategy"], "groups": _groups(groups)})

    hits = pq.read_table(root / "decontam" / "removed.parquet").to_pylist()
    hits = sorted(hits, key=lambda r: (-r["similarity"], r["key"]))[:DECONTAM_HITS]
    evals = {name: Thumbnails(ingest / "eval" / name) for name in {h["eval_set"] for h in hits}}
    decontam = [
        [(evals[h["eval_set"]], h["eval_key"], h["eval_set"]), (pool, h["key"], f"{h['similarity']:.3f}")] for h in hits
    ]

    return {"duplicates": _groups(duplicates), "retrieval": retrieval, "decontam": _groups(decontam)}


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
