"""kNN-graph building: exact (IndexFlatIP) vs IVF-PQ, time, peak memory and edge recall, in one run.

    python benchmarks/dedup.py [--sizes 100000 1000000] [--dim 256] [--exact-queries 20000]

Vectors are random unit vectors plus planted near-duplicate clusters (each a random centre with
copies at cosine ~0.7-0.95), so the graph has real edges to recover (threshold 0.6, k = 64, as in
the paper). Exact search over every query is quadratic: at 1M on 2 cores it takes hours, so the
exact side is timed on `--exact-queries` query rows and scaled linearly (search time is linear in
the number of queries for a fixed index); recall is measured on those same rows. Peak memory is
the RSS high-water mark of a fresh process per method, against the vectors' own bytes.
Both sides use the dedup stage's default index settings; an edge counts once whichever end found
it, as in the stage's graph.
Targets (issue 5): IVF-PQ <= 0.05x exact time at 1M, edge recall >= 0.98, peak RSS <= 2x vectors.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

CHUNK = 50_000  # the dedup stage's default chunk_size


def measure(kind: str, n: int, dim: int, queries: int) -> dict:
    """Run in a fresh process: build the index, search `queries` rows, report time, RSS and edges."""
    from curation.knn import IndexSpec, build_index, neighbours_above
    from curation.synth.vectors import planted_vectors

    vectors = planted_vectors(n, dim)
    spec = IndexSpec(kind=kind, device="cpu")
    started = time.perf_counter()
    index = build_index(vectors, spec)
    built = time.perf_counter() - started
    started = time.perf_counter()
    edges: set[tuple[int, int]] = set()
    for start in range(0, queries, CHUNK):  # in chunks, as the dedup stage searches
        edge_rows, ids, _ = neighbours_above(
            index, spec, vectors, vectors[start : min(start + CHUNK, queries)], 65, 0.6
        )
        src = edge_rows + start
        edges |= set(zip(np.minimum(src, ids).tolist(), np.maximum(src, ids).tolist(), strict=True))
    searched = time.perf_counter() - started
    return {
        "build_s": built,
        "search_s": searched,
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "edges": sorted((a, b) for a, b in edges if a != b),
    }


def run_child(kind: str, n: int, dim: int, queries: int) -> dict:
    code = f"import json, benchmarks.dedup as b; print(json.dumps(b.measure({kind!r}, {n}, {dim}, {queries})))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--exact-queries", type=int, default=20_000)
    parser.add_argument("--record", action="store_true", help="append the measured rate to benchmarks/results.jsonl")
    args = parser.parse_args()
    for n in args.sizes:
        queries = min(n, args.exact_queries)
        exact = run_child("exact", n, args.dim, queries)
        approx = run_child("ivf_pq", n, args.dim, n)
        scale = n / queries
        exact_total = exact["build_s"] + exact["search_s"] * scale
        approx_total = approx["build_s"] + approx["search_s"]
        truth = {tuple(e) for e in exact["edges"]}
        found = {tuple(e) for e in approx["edges"] if e[0] < queries or e[1] < queries}
        recall = len(truth & found) / max(1, len(truth))
        vector_kib = n * args.dim * 4 / 1024
        print(
            f"N={n:,} D={args.dim}: exact {exact_total:8.1f}s{f' (scaled from {queries} queries)' if scale > 1 else ''}, "
            f"ivf_pq {approx_total:7.1f}s -> time ratio {approx_total / exact_total:.3f} (target <= 0.05 at 1M)"
        )
        print(
            f"    edge recall ivf_pq vs exact {recall:.4f} over {len(truth):,} edges (target >= 0.98); "
            f"peak RSS / vector bytes: exact {exact['rss_kib'] / vector_kib:.2f}, ivf_pq {approx['rss_kib'] / vector_kib:.2f} "
            f"(target <= 2)"
        )
        if args.record:
            import faiss

            from curation.measurements import record

            gpu = faiss.get_num_gpus() > 0
            for kind, seconds in (("exact", exact_total), ("ivf_pq", approx_total)):
                record(
                    "benchmarks/dedup.py", "dedup.knn_vectors_per_s", n / seconds, "vectors/s", f"{kind}@{n}", gpu=gpu
                )


if __name__ == "__main__":
    main()
