"""`--plan`: the work each curation stage will do for a pool size, and its cost on a fleet.

Every figure is one of three kinds, and the plan says which:
- measured: a rate recorded on this device kind in benchmarks/results.jsonl (see
  curation/measurements.py), extrapolated with the stage's scaling from the size it was measured at;
- estimate: no record for this GPU yet, so the work's FLOPs over the GPU's peak at a stated
  utilisation (`UTILISATION`); a GPU record replaces it as soon as one is made;
- missing: neither, with the benchmark command that would measure it.

Scaling rules, per stage:
- ingest: linear in images, spread over CPU cores (the rate is per worker process), after the
  driver has listed every input in one process (linear, not spread);
- embed: linear in images, per role's model, spread over GPUs (or CPU cores); the CPU cores a GPU
  fleet needs to decode JPEGs for it come from the measured decode rate per core;
- dedup kNN graph: per-query cost grows like sqrt(N) for IVF indexes (nlist = 2·sqrt(N) lists,
  a fixed nprobe of them scanned) and like N for the exact index, from the size it was measured at;
- decontam: an index over the pool (building it assigns N vectors to 2·sqrt(N) lists) plus the
  eval images' search: N·sqrt(N), from the size it was measured at;
- retrieve: the cluster rows' k-means, (iterations x min(N, 256·K) training points + N assigned)
  x K clusters x 2·D FLOPs, and each balanced row's hierarchical k-means (the same per level, plus
  a pass over the level's points per resampling step); the sample rows' search is small beside it
  and not counted. It runs in the driver, so on one node's GPUs whatever the fleet;
- curated: linear in the curated images, spread over CPU cores (one task per output shard; the
  rate is per worker process).

Memory: ingest's driver lists every input; dedup, decontam and retrieve each hold a key, a few
numbers and an index entry per pool image (their vectors are memory-mapped from scratch disk,
`embed.embeddings_on_disk`) and a training sample, and dedup its kNN graph's edges; the curated
stage's driver holds its plan. The plan states what that process needs, since past one machine's
memory no fleet size helps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from curation.knn import KMEANS_POINTS_PER_CENTROID, IndexSpec
from curation.measurements import Measurement, latest
from curation.retrieve import SeedSet
from curation.run_config import CurationConfig
from foundation.errors import ConfigError
from foundation.gpus import gpu_peak


@dataclass(frozen=True)
class Fleet:
    gpus: int
    gpu: str | None
    cpus: int
    node_gpus: int = 0  # one node's GPUs (the last count of NODESxGPUSxKIND); 0: all on one node

    @classmethod
    def parse(cls, gpus: str | None, cpus: int | None) -> Fleet:
        """`8xH100`, `20x8xV100` (nodes x GPUs x kind) or None (CPU only)."""
        if not gpus:
            return cls(0, None, cpus or 1)
        match = re.fullmatch(r"((?:\d+x)+)([A-Za-z][\w-]*)", gpus)
        if not match:
            raise ConfigError(f"--gpus {gpus!r}: expected COUNTxKIND, e.g. 8xH100 or 20x8xV100")
        counts = [int(n) for n in match.group(1).rstrip("x").split("x")]
        return cls(math.prod(counts), match.group(2), cpus or 12 * math.prod(counts), counts[-1])

    @property
    def driver_gpus(self) -> int:
        """The GPUs work in the stage driver itself (retrieve's k-means) can use: one node's."""
        return self.node_gpus or self.gpus

    @property
    def device(self) -> str:
        return self.gpu or "cpu"


UTILISATION = {"embed": 0.40, "kmeans": 0.50, "index": 0.10}
"""Fractions of peak the estimates assume: a ViT's batched forward (bf16), Faiss k-means' GEMMs
(fp32), and IVF-PQ scans and assignment, which are bound by memory, not arithmetic (fp32)."""

MODELS = {
    "dinov2:vits14": (11.0, 384),
    "dinov2:vitb14": (43.9, 768),
    "dinov2:vitl14": (155.5, 1024),
    "dinov2:vitg14": (582.5, 1536),
    "timm:vit_huge_patch14_224": (323.8, 1280),
    "sscd": (13.5, 512),
}
"""GFLOPs of one image's forward and the embedding width; counted with torch's FlopCounterMode at
each model's input size (SSCD: a ResNet-50 at 288 pixels). A name matches its key or contains it."""

PQ_OPS_PER_CODE = 2 * 32  # a 4-bit PQ code of D/8 = 32 sub-quantizers (256-d) costs ~32 lookups and adds
PAPER = "DINOv2 (Oquab et al. 2023): curation ran on 20 nodes x 8 V100-32GB in under 2 days (< 7,680 GPU-hours)"


@dataclass(frozen=True)
class PlanRow:
    stage: str
    work: str
    rate: Measurement | None
    device_hours: float | None
    wall_hours: float | None
    note: str = ""
    basis: str = "measured"  # measured | estimate | missing
    on_gpu: bool = False
    memory: float | None = None  # bytes one process of the stage holds, when that grows with the data
    memory_note: str = ""


def _missing(stage: str, work: str, how: str) -> PlanRow:
    return PlanRow(stage, work, None, None, None, f"no measurement; run {how}", basis="missing")


def _model(name: str) -> tuple[float, int] | None:
    return MODELS.get(name) or next((v for k, v in MODELS.items() if k in name.lower()), None)


def _estimate(stage: str, work: str, flops: float, fleet: Fleet, kind: str, precision: str) -> PlanRow | None:
    """GPU-hours for `flops` at `UTILISATION[kind]` of the fleet GPU's `precision` peak, or None."""
    peak = gpu_peak(fleet.gpu) if fleet.gpu else None
    if peak is None:
        return None
    rate = getattr(peak, precision) * 1e12 * UTILISATION[kind]
    gpu_hours = flops / rate / 3600
    note = f"estimate: {flops:.3g} FLOPs at {UTILISATION[kind]:.0%} of {fleet.gpu} {precision} peak"
    return PlanRow(stage, work, None, gpu_hours, gpu_hours / fleet.gpus, note, basis="estimate", on_gpu=True)


def _ingest(config: CurationConfig, pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    work = f"{pool:.3g} images decoded, checked and written"
    rate = latest(results, "ingest.images_per_s_per_worker", "ingest", "cpu")
    if rate is None:
        return _missing("ingest", work, "python benchmarks/ingest.py --record")
    row = _listing_time(_on_cpu_workers("ingest", work, pool, rate, fleet), pool, results)
    urls = any(source.kind == "urls" for source in config.ingest.sources)
    listing = latest(results, "ingest.listing_bytes_per_input", "urls" if urls else "ingest", "cpu")
    if listing is None:
        return replace(row, memory_note="memory: not measured; run python benchmarks/memory.py --record")
    what = "every URL (deduplicated and written out for img2dataset first)" if urls else "every input"
    why = f"the driver's listing of {what} (Arrow), {listing.value:,.0f} bytes an input [{listing.cite()}]"
    return replace(row, memory=pool * listing.value, memory_note=why)


def _on_cpu_workers(stage: str, work: str, items: float, rate: Measurement, fleet: Fleet) -> PlanRow:
    """`items` at `rate` a worker process, a worker a core: core-hours, spread over the fleet's cores."""
    core_hours = items / rate.value / 3600
    return PlanRow(stage, work, rate, core_hours, core_hours / fleet.cpus, f"{fleet.cpus} CPU workers (core-hours)")


def _listing_time(row: PlanRow, pool: float, results: list[Measurement]) -> PlanRow:
    """`row` (ingest's) with the driver's listing of every input, which runs before any worker in
    one process: its hours add to the wall time whatever the fleet."""
    rate = latest(results, "ingest.listing_inputs_per_s", "folder", "cpu")
    if rate is None:
        return replace(row, note=f"{row.note}; listing: not measured, run python benchmarks/ingest.py --record")
    hours = pool / rate.value / 3600
    note = f"{row.note}; plus {hours:,.2f} h listing every input in the driver first, {rate.value:,.0f} inputs/s [{rate.cite()}]"
    return replace(row, device_hours=row.device_hours + hours, wall_hours=row.wall_hours + hours, note=note)


def _embed(role: str, model: str, pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    stage, work = f"embed ({role})", f"{pool:.3g} images through {model}"
    rate = latest(results, "embed.images_per_s", model, fleet.device)
    if rate is not None and fleet.gpu:
        device_hours = pool / rate.value / 3600
        return PlanRow(stage, work, rate, device_hours, device_hours / fleet.gpus, "GPU-hours", on_gpu=True)
    if rate is not None:
        core_hours = pool / (rate.value / rate.cores) / 3600
        return PlanRow(stage, work, rate, core_hours, core_hours / fleet.cpus, "core-hours")
    known = _model(model)
    estimate = known and _estimate(stage, work, pool * known[0] * 1e9, fleet, "embed", "bf16")
    flag = " --gpu" if fleet.gpu else ""
    how = f"python benchmarks/embed.py --model {model}{flag} --record on {fleet.device}"
    if estimate:
        return replace(estimate, note=f"{estimate.note}; measure: {how}")
    return _missing(stage, work, how)


def _dim(config: CurationConfig, role: str) -> int:
    known = _model(config.embed.models[role].name) if role in config.embed.models else None
    return known[1] if known else 256


def _index_rate(metric: str, kind: str, fleet: Fleet, results: list[Measurement]) -> Measurement | None:
    """Any pool size this metric and index kind was measured at on this device: the newest day's,
    and of those the largest size (the shortest extrapolation), then the one recorded last."""
    candidates = [
        (m.date, float(m.subject.split("@")[1]), position, m)
        for position, m in enumerate(results)
        if m.metric == metric and m.subject.startswith(f"{kind}@") and fleet.device.lower() in m.device.lower()
    ]
    return max(candidates, key=lambda c: c[:3])[3] if candidates else None


def _scaled(stage: str, work: str, units: float, rate: Measurement, fleet: Fleet, scaling: str) -> PlanRow:
    """`units` of work at `rate` (already grown by the stage's scaling): GPU-hours, or core-hours."""
    if fleet.gpu:
        hours = units / rate.value / 3600
        return PlanRow(stage, work, rate, hours, hours / fleet.gpus, scaling, on_gpu=True)
    core_hours = units / (rate.value / rate.cores) / 3600
    return PlanRow(stage, work, rate, core_hours, core_hours / fleet.cpus, f"{scaling}, core-hours")


def _dedup(config: CurationConfig, pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    kind, k = config.dedup.index.kind, config.dedup.k
    work = f"kNN graph (k={k}) over {pool:.3g} vectors, {kind} index"
    rate = _index_rate("dedup.knn_vectors_per_s", kind, fleet, results)
    if rate is not None:
        measured_at = float(rate.subject.split("@")[1])
        growth = pool / measured_at if kind == "exact" else math.sqrt(pool / measured_at)
        scaling = f"per-query cost x {'N' if kind == 'exact' else 'sqrt(N)'} from {measured_at:.3g}"
        return _scaled("dedup", work, pool * growth, rate, fleet, scaling)
    nlist = 2 * math.sqrt(pool)
    nprobe = config.dedup.index.nprobe or nlist / 16
    per_query = pool * nprobe / nlist * PQ_OPS_PER_CODE + 2 * _dim(config, config.dedup.role) * 4 * k
    return _estimate("dedup", work, pool * per_query, fleet, "index", "fp32") or _missing(
        "dedup", work, f"python benchmarks/dedup.py --record on {fleet.device}"
    )


def _decontam(config: CurationConfig, pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    work = f"index over {pool:.3g} pool vectors, every eval image searched against it"
    rate = _index_rate("decontam.pool_images_per_s", "decontam", fleet, results)
    if rate is not None:
        measured_at = float(rate.subject.split("@")[1])
        growth = math.sqrt(pool / measured_at)
        return _scaled("decontam", work, pool * growth, rate, fleet, f"N·sqrt(N) from {measured_at:.3g}")
    flops = pool * 2 * math.sqrt(pool) * 2 * _dim(config, config.decontam.role)  # assigning N to 2·sqrt(N) lists
    return _estimate("decontam", work, flops, fleet, "index", "fp32") or _missing(
        "decontam", work, f"python benchmarks/downstream.py --record on {fleet.device}"
    )


def _retrieve(config: CurationConfig, pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    dim = _dim(config, config.retrieve.role)
    point_clusters, work = _kmeans_work(config, pool)
    work = f"{work}, {config.retrieve.kmeans_iterations} iterations (d={dim})"
    rate = _index_rate("retrieve.kmeans_point_clusters_per_s", "d", fleet, results)
    if rate is not None:
        measured_dim = float(rate.subject.split("@")[1])
        row = _scaled("retrieve", work, point_clusters * dim / measured_dim, rate, fleet, "per point-cluster x d")
    else:
        row = _estimate("retrieve", work, point_clusters * 2 * dim, fleet, "kmeans", "fp32") or _missing(
            "retrieve", work, f"python benchmarks/downstream.py --record on {fleet.device}"
        )
    if not row.on_gpu:
        return row
    note = f"{row.note}; k-means runs in the driver, on its node's {fleet.driver_gpus} GPUs"
    return replace(row, wall_hours=row.device_hours / fleet.driver_gpus, note=note)


def _kmeans_work(config: CurationConfig, pool: float) -> tuple[float, str]:
    """Point-cluster products of retrieve's k-means, and what they are: the `cluster` rows' shared
    k-means (iterations over min(N, 256·K) training points, then N assigned), and each `balanced`
    row's levels (the same, plus per resampling step a pass over the level's points and k-means on
    the points nearest each centroid)."""
    retrieve, iterations = config.retrieve, config.retrieve.kmeans_iterations
    products, work = 0.0, []
    if any(row.strategy.kind == "cluster" for row in retrieve.sources):
        products += (iterations * min(pool, KMEANS_POINTS_PER_CENTROID * retrieve.clusters) + pool) * retrieve.clusters
        work.append(f"k-means of {pool:.3g} vectors into {retrieve.clusters:,} clusters")
    for row in _balanced_rows(config):
        points, steps = pool, row.strategy.resampling_steps
        for k in row.strategy.levels:
            k = min(k, points)
            trained, resampled = (
                min(points, KMEANS_POINTS_PER_CENTROID * k),
                min(points, k * row.strategy.resample_points),
            )
            products += (iterations * trained + steps * (points + iterations * resampled) + points) * k
            points = k
        work.append(f"{row.name}: hierarchical k-means into {row.strategy.levels} clusters, {steps} resampling steps")
    return products, "; ".join(work) or "no k-means (no cluster or balanced row)"


def _balanced_rows(config: CurationConfig) -> list[SeedSet]:
    return [row for row in config.retrieve.sources if row.strategy.kind == "balanced"]


def _curated(config: CurationConfig, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    images = config.retrieve.expected_total()
    work = f"{images:,} retrieved images copied into shards with lineage"
    rate = latest(results, "assemble.images_per_s_per_worker", "assemble", "cpu")
    if rate is None:
        return _missing("curated", work, "python benchmarks/downstream.py --record")
    row = _on_cpu_workers("curated", work, images, rate, fleet)
    driver = latest(results, "assemble.plan_bytes_per_image", "assemble", "cpu")
    if driver is None:
        return row
    why = f"the driver's plan, {driver.value:,.0f} bytes a curated image [{driver.cite()}]"
    return replace(row, memory=images * driver.value, memory_note=why)


def _driver_memory(
    row: PlanRow, config: CurationConfig, role: str, spec: IndexSpec, pool: float, results: list[Measurement]
) -> PlanRow:
    """`row` with the memory of the stage's driver: its measured bytes an image (dedup's, for a stage
    not measured itself), with the measured index entry swapped for this stage's (kind and width);
    the largest sample it trains on in memory; and the scratch disk its memory-mapped vectors take."""
    driver = _driver_measurement(row.stage, config, results)
    if driver is None:
        return replace(row, memory_note="memory: not measured; run python benchmarks/memory.py --record")
    dim = _dim(config, role)
    measured_entry = index_entry_bytes(int(driver.subject.split("@")[1]), IndexSpec(kind="ivf_pq"))
    per_image = driver.value - measured_entry + index_entry_bytes(dim, spec)
    sample, sampled = _training_sample(row.stage, config, spec, pool)
    why = (
        f"a key, a few numbers and an index entry ({spec.kind}, d={dim}) an image, {per_image:,.0f} bytes as "
        f"{driver.metric.split('.')[0]}'s driver measured [{driver.cite()}]"
    )
    if sample:
        why += f"; {size(sample * 4 * dim)} for {sampled}, {sample:.3g} vectors in memory"
    why += f"; and {size(pool * 4 * dim)} of scratch disk for the memory-mapped {role} vectors"
    if row.stage in SEARCH_TASKS and spec.kind == "ivf_pq":
        codes = size(pool * index_entry_bytes(dim, spec))
        why += f"; each search task copies the index's fast-scan codes, {codes} ({row.stage}.threads: CPUs a task)"
    return replace(row, memory=pool * per_image + sample * 4 * dim, memory_note=why)


def _driver_measurement(stage: str, config: CurationConfig, results: list[Measurement]) -> Measurement | None:
    """The newest record of the stage driver's bytes an image (for retrieve with a `balanced` row, the
    larger of its two drivers' figures: rows run one after another), or of dedup's where it has none."""
    metrics = [f"{stage}.driver_bytes_per_image"]
    if stage == "retrieve" and _balanced_rows(config):
        metrics.append("retrieve.balanced_bytes_per_image")
    own = [m for m in (_newest_on_cpu(metric, results) for metric in metrics) if m is not None]
    return max(own, key=lambda m: m.value) if own else _newest_on_cpu("dedup.driver_bytes_per_image", results)


def _newest_on_cpu(metric: str, results: list[Measurement]) -> Measurement | None:
    measured = [m for m in results if m.metric == metric and m.device == "cpu"]
    return max(reversed(measured), key=lambda m: m.date) if measured else None


def _training_sample(stage: str, config: CurationConfig, spec: IndexSpec, pool: float) -> tuple[float, str]:
    """The most vectors the stage copies into memory at once to train on, and what for: an IVF
    index's `train_size`, or retrieve's k-means, KMEANS_POINTS_PER_CENTROID a cluster (100K
    clusters at ViT-H width: 122 GiB), whichever is larger."""
    samples = [(0.0, "")]
    if spec.kind != "exact":
        samples.append((min(pool, spec.train_size), "the index's training sample (index.train_size)"))
    if stage == "retrieve" and any(row.strategy.kind == "cluster" for row in config.retrieve.sources):
        points = min(pool, KMEANS_POINTS_PER_CENTROID * config.retrieve.clusters)
        samples.append((points, f"k-means' training sample ({KMEANS_POINTS_PER_CENTROID} points a cluster)"))
    for row in _balanced_rows(config) if stage == "retrieve" else []:
        points = min(pool, KMEANS_POINTS_PER_CENTROID * row.strategy.levels[0])
        samples.append((points, f"{row.name}'s finest k-means' training sample"))
    return max(samples)


PAPER_DEDUP_KEPT = 1.1 / 1.2
"""Share of the pool DINOv2's self-dedup kept (1.2B -> 1.1B images). Each removed image is joined to
its component by an edge at least, so the kNN graph has at least (1 - this) edges an image."""


def _graph_memory(row: PlanRow, config: CurationConfig, pool: float, results: list[Measurement]) -> PlanRow:
    """`row` (dedup's) with its driver's memory for the kNN graph: the measured bytes an edge, times
    the fewest edges the paper's dedup rate implies; the most (k/2 an image, a pool of copies) is
    stated beside it, since how many copies a crawl holds is only known once it is deduplicated."""
    edge = latest(results, "dedup.driver_bytes_per_edge", "dedup", "cpu")
    if edge is None or row.memory is None or config.dedup.mode != "knn":
        return row
    fewest, most = pool * (1 - PAPER_DEDUP_KEPT), pool * config.dedup.k / 2
    why = (
        f"; and {edge.value:,.1f} bytes a kNN edge [{edge.cite()}]: {fewest:.3g} edges at least (the paper's "
        f"1.2B -> 1.1B, an edge a removed image), {size(fewest * edge.value)}, up to k/2 an image in a pool of "
        f"copies, {size(most * edge.value)}"
    )
    return replace(row, memory=row.memory + fewest * edge.value, memory_note=row.memory_note + why)


SEARCH_TASKS = ("dedup", "retrieve")
"""Stages that search a saved index from many tasks (`knn.open_saved`); decontam searches in its driver."""


def index_entry_bytes(dim: int, spec: IndexSpec) -> float:
    """What an index holds per vector: a 4-bit PQ code of d/8 sub-quantizers and its id, or the
    vector itself (and its id in an IVF list)."""
    if spec.kind == "ivf_pq":
        return dim / 16 + 8
    return 4 * dim + (8 if spec.kind == "ivf_flat" else 0)


def plan(config: CurationConfig, pool: float, fleet: Fleet, results: list[Measurement]) -> list[PlanRow]:
    rows = [_ingest(config, pool, fleet, results)]
    for role, spec in config.embed.models.items():
        rows.append(_embed(role, spec.name, pool, fleet, results))
    for stage, section in ((_dedup, config.dedup), (_decontam, config.decontam), (_retrieve, config.retrieve)):
        row = _driver_memory(stage(config, pool, fleet, results), config, section.role, section.index, pool, results)
        rows.append(_graph_memory(row, config, pool, results) if stage is _dedup else row)
    rows.append(_curated(config, fleet, results))
    return rows


def decode_cores(rows: list[PlanRow], pool: float, fleet: Fleet, results: list[Measurement]) -> str:
    """How many CPU cores keep the GPUs fed through the fastest embed pass (the copy model's,
    usually): decoding on the CPU, from the measured decode rate per core; decoding on the GPU
    (`embed.decode=device`), from the CPU core-seconds per image the embed stage kept busy on this
    GPU kind (reading tars, the decode's host side, batching)."""
    passes = [r.wall_hours for r in rows if r.stage.startswith("embed") and r.on_gpu and r.wall_hours]
    if not fleet.gpu or not passes:
        return ""
    images_per_s = pool / (min(passes) * 3600)
    rate = latest(results, "decode.images_per_s_per_core", "decode", "cpu")
    if rate is None:
        on_cpu = "decode cores, embed.decode=cpu: no measurement; run python benchmarks/ingest.py --record"
    else:
        cores = images_per_s / rate.value
        on_cpu = (
            f"decode cores, embed.decode=cpu: {cores:,.0f} CPU cores ({cores / fleet.gpus:.1f} per GPU) to decode "
            f"JPEGs as fast as the fastest embed pass reads them, at {rate.value:,.0f} images/s per core "
            f"[{rate.cite()}; the synthetic crawl's 200-320 px images: web-size JPEGs decode several times slower]"
        )
    busy = latest(results, "embed.core_seconds_per_image", "decode=device", fleet.device)
    if busy is None:
        on_gpu = (
            f"decode cores, embed.decode=device: no measurement on {fleet.device}; "
            "run bash benchmarks/gpu_check.sh --record embed there"
        )
    else:
        cores = images_per_s * busy.value
        on_gpu = (
            f"decode cores, embed.decode=device: {cores:,.0f} CPU cores ({cores / fleet.gpus:.1f} per GPU) busy "
            f"beside the GPUs, at {busy.value * 1000:.2f} core-ms per image [{busy.cite()}]"
        )
    return f"{on_cpu}\n{on_gpu}"


def render(rows: list[PlanRow], pool: float, fleet: Fleet, results: list[Measurement] | None = None) -> str:
    fleet_text = f"{fleet.gpus} x {fleet.gpu} GPUs, {fleet.cpus} CPU cores" if fleet.gpu else f"{fleet.cpus} CPU cores"
    lines = [f"plan: {pool:.3g} pool images on {fleet_text}", ""]
    for row in rows:
        cost = f"{row.device_hours:,.1f} device-h, {row.wall_hours:,.2f} h wall" if row.wall_hours is not None else "?"
        rate = f"{row.rate.value:,.1f} {row.rate.unit} [{row.rate.cite()}]" if row.rate else ""
        lines.append(f"  {row.stage:<18} {row.work}")
        lines.append(f"  {'':<18} [{row.basis}] {cost}  {rate}  {row.note}".rstrip())
        if row.memory is not None:
            lines.append(f"  {'':<18} memory: at least {size(row.memory)}: {row.memory_note}")
        elif row.memory_note:
            lines.append(f"  {'':<18} {row.memory_note}")
    known = [r for r in rows if r.wall_hours is not None]
    unknown = [r.stage for r in rows if r.wall_hours is None]
    gpu_hours = sum(r.device_hours for r in known if r.on_gpu)
    core_hours = sum(r.device_hours for r in known if not r.on_gpu)
    wall = sum(r.wall_hours for r in known)
    estimated = [r.stage for r in known if r.basis == "estimate"]
    lines += [
        "",
        f"total: {gpu_hours:,.0f} GPU-hours + {core_hours:,.0f} CPU core-hours; {wall:,.1f} h wall "
        f"({wall / 24:,.1f} days), stages one after another"
        + (f"; estimated, not measured: {', '.join(estimated)}" if estimated else "")
        + (f"; unmeasured stages: {', '.join(unknown)}" if unknown else ""),
    ]
    holding = [r for r in rows if r.memory is not None]
    if holding:
        most = max(holding, key=lambda r: r.memory)
        lines.append(
            f"largest process: at least {size(most.memory)} ({most.stage}); a stage needs a machine with that much "
            "memory whatever the fleet's size"
        )
    cores = decode_cores(rows, pool, fleet, results or [])
    if cores:
        lines.append(cores)
    lines.append(f"reference: {PAPER}")
    return "\n".join(lines)


def size(n_bytes: float) -> str:
    """Bytes in GiB, or TiB from 1,024 GiB on."""
    gib = n_bytes / 2**30
    return f"{gib / 1024:,.1f} TiB" if gib >= 1024 else f"{gib:,.1f} GiB"
