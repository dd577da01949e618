"""The numbers of a finished curation run, gathered from its manifest and stage outputs into stats.json.

Every pool input lands in exactly one final bucket (curated, not retrieved, contaminated,
duplicate, quarantined); `collect_stats` re-checks that the buckets add up to the crawl and
refuses to write a report that does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.rundir import RunDir
from foundation.errors import StageError

FATES = ("curated", "not_retrieved", "contaminated", "duplicate", "quarantined")


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    q = np.quantile(values, [0.0, 0.5, 0.9, 1.0])
    return {"min": float(q[0]), "median": float(q[1]), "p90": float(q[2]), "max": float(q[3])}


def _counts(values: pa.ChunkedArray) -> dict[str, int]:
    """How often each value occurs, in value order, keyed by its text; counted in Arrow, as the
    decontaminated images alone run to hundreds of millions at the paper's scale."""
    found = pc.value_counts(values)
    order = pc.sort_indices(found.field("values"))
    pairs = zip(
        found.field("values").take(order).to_pylist(), found.field("counts").take(order).to_pylist(), strict=True
    )
    return {str(value): count for value, count in pairs}


def collect_stats(run_dir: Path) -> dict[str, Any]:
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    if "config_hash" not in manifest:
        raise StageError(f"{run_dir} has no manifest.json: it is neither a curation run nor a training run")
    counts = {name: record.get("counts", {}) for name, record in manifest["stages"].items()}
    missing = [s for s in ("ingest", "dedup", "decontam", "retrieve", "curated") if s not in counts]
    if missing:
        raise StageError(f"{run_dir}: stages {missing} have not finished; run `lvd curate` first")
    ingest, dedup, decontam, curated = counts["ingest"], counts["dedup"], counts["decontam"], counts["curated"]
    fates = {fate: curated[f"pool.{fate}"] for fate in FATES}
    if sum(fates.values()) != ingest["inputs"]:
        raise StageError(f"{run_dir}: final buckets {fates} do not add up to {ingest['inputs']} inputs")

    root = Path(run_dir)
    index = pq.read_table(root / "ingest" / "index.parquet", columns=["width", "height", "bytes"])
    width, height = index["width"].to_numpy(), index["height"].to_numpy()
    sizes = pq.read_table(root / "dedup" / "keep.parquet", columns=["component_size"])["component_size"]
    eval_sets = pq.read_table(root / "decontam" / "removed.parquet", columns=["eval_set"])["eval_set"]
    return {
        "run": {"name": manifest.get("config", {}).get("run", {}).get("name"), "config_hash": manifest["config_hash"]},
        "inputs": ingest["inputs"],
        "funnel": [
            {"step": "crawled", "images": ingest["inputs"]},
            {"step": "ingested", "images": ingest["ingested"]},
            {"step": "after dedup", "images": dedup["kept"]},
            {"step": "after decontamination", "images": decontam["kept"]},
            {"step": "curated from the pool", "images": curated["curated.pool"]},
        ],
        "fates": fates,
        "curated": {
            "images": curated["curated"],
            "seed_images": curated["curated.seed_images"],
            "shards": curated["shards"],
        },
        "quarantine": {
            k.removeprefix("quarantined."): v for k, v in sorted(ingest.items()) if k.startswith("quarantined.")
        },
        "sources": read_source_rows(root),
        "dedup": {
            "components_with_duplicates": dedup["components_with_duplicates"],
            "largest_component": pc.max(sizes).as_py() or 0,
            "component_sizes": _counts(sizes.filter(pc.greater(sizes, 1))),
            "threshold": manifest["config"]["dedup"]["threshold"],
        },
        "decontam": {
            "removed": decontam["removed"],
            "by_eval_set": _counts(eval_sets),
            "threshold": manifest["config"]["decontam"]["threshold"],
        },
        "images": {
            "width": _quantiles(width),
            "height": _quantiles(height),
            "aspect": _quantiles(width / np.maximum(height, 1)),
            "bytes": _quantiles(index["bytes"].to_numpy()),
        },
    }


def read_source_rows(root: Path) -> list[dict[str, Any]]:
    rows = json.loads((root / "retrieve" / "rows.json").read_text())
    return [{"name": name, **row} for name, row in rows.items()]
