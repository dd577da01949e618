"""`--plan`: the work each curation stage will do for a pool size, and its cost from measured rates.

Every rate comes from a line of benchmarks/results.jsonl (see curation/measurements.py) and the
plan prints which. Where no measurement exists for the model and device asked about, the plan
says so and which benchmark command would provide it, instead of guessing.

Scaling rules, per stage:
- ingest: linear in images, spread over CPU cores (the rate is per worker process);
- embed: linear in images, spread over GPUs (or CPU machines), per role's model;
- dedup kNN graph: per-query cost grows like sqrt(N) for IVF indexes (nlist = 2·sqrt(N) lists,
  a fixed nprobe of them scanned) and like N for the exact index, from the size it was measured at;
  queries are spread over devices.
Retrieval k-means, decontamination and assembly are not modelled yet and are listed as such.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from curation.errors import ConfigError
from curation.measurements import Measurement, latest
from curation.run_config import CurationConfig

PAPER = "DINOv2 (Oquab et al. 2023): curation ran on 20 nodes x 8 V100-32GB in under 2 days (< 7,680 GPU-hours)"


@dataclass(frozen=True)
class Fleet:
    gpus: int
    gpu: str | None
    cpus: int

    @classmethod
    def parse(cls, gpus: str | None, cpus: int | None) -> Fleet:
        """`8xH100`, `20x8xV100` (nodes x GPUs x kind) or None (CPU only)."""
        if not gpus:
            return cls(0, None, cpus or 1)
        match = re.fullmatch(r"((?:\d+x)+)([A-Za-z][\w-]*)", gpus)
        if not match:
            raise ConfigError(f"--gpus {gpus!r}: expected COUNTxKIND, e.g. 8xH100 or 20x8xV100")
        count = math.prod(int(n) for n in match.group(1).rstrip("x").split("x"))
        return cls(count, match.group(2), cpus or 12 * count)

    @property
    def device(self) -> str:
        return self.gpu or "cpu"


@dataclass(frozen=True)
class PlanRow:
    stage: str
    work: str
    rate: Measurement | None
    device_hours: float | None
    wall_hours: float | None
    note: str = ""


def _missing(stage: str, work: str, how: str) -> PlanRow:
    return PlanRow(stage, work, None, None, None, f"no measurement; run {how}")


def _ingest(pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    work = f"{pool:.3g} images decoded, checked and written"
    rate = latest(results, "ingest.images_per_s_per_worker", "ingest", "cpu")
    if rate is None:
        return _missing("ingest", work, "python benchmarks/ingest.py --record")
    core_hours = pool / rate.value / 3600
    return PlanRow("ingest", work, rate, core_hours, core_hours / fleet.cpus, f"{fleet.cpus} CPU workers (core-hours)")


def _embed(role: str, model: str, pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    work = f"{pool:.3g} images through {model}"
    rate = latest(results, "embed.images_per_s", model, fleet.device)
    if rate is None:
        flag = " --gpu" if fleet.gpu else ""
        return _missing(
            f"embed ({role})", work, f"python benchmarks/embed.py --model {model}{flag} --record on {fleet.device}"
        )
    if fleet.gpu:
        device_hours = pool / rate.value / 3600
        return PlanRow(f"embed ({role})", work, rate, device_hours, device_hours / fleet.gpus, "GPU-hours")
    core_hours = pool / (rate.value / rate.cores) / 3600
    return PlanRow(f"embed ({role})", work, rate, core_hours, core_hours / fleet.cpus, "core-hours")


def _dedup(kind: str, k: int, pool: float, fleet: Fleet, results: list[Measurement]) -> PlanRow:
    work = f"kNN graph (k={k}) over {pool:.3g} vectors, {kind} index"
    # Any pool size this index kind was measured at, on this device: the newest day's, and of those
    # the largest size (the shortest extrapolation), then the one recorded last.
    candidates = [
        (m.date, float(m.subject.split("@")[1]), position, m)
        for position, m in enumerate(results)
        if m.metric == "dedup.knn_vectors_per_s"
        and m.subject.startswith(f"{kind}@")
        and fleet.device.lower() in m.device.lower()
    ]
    rate = max(candidates, key=lambda c: c[:3])[3] if candidates else None
    if rate is None:
        return _missing("dedup", work, f"python benchmarks/dedup.py --record on {fleet.device}")
    measured_at = float(rate.subject.split("@")[1])
    growth = pool / measured_at if kind == "exact" else math.sqrt(pool / measured_at)
    scaling = "N" if kind == "exact" else "sqrt(N)"
    if fleet.gpu:
        device_hours = pool * growth / rate.value / 3600
        return PlanRow("dedup", work, rate, device_hours, device_hours / fleet.gpus, f"per-query cost x {scaling}")
    core_hours = pool * growth / (rate.value / rate.cores) / 3600
    return PlanRow("dedup", work, rate, core_hours, core_hours / fleet.cpus, f"per-query cost x {scaling}, core-hours")


def plan(config: CurationConfig, pool: float, fleet: Fleet, results: list[Measurement]) -> list[PlanRow]:
    rows = [_ingest(pool, fleet, results)]
    for role, spec in config.embed.models.items():
        rows.append(_embed(role, spec.name, pool, fleet, results))
    rows.append(_dedup(config.dedup.index.kind, config.dedup.k, pool, fleet, results))
    rows += [
        PlanRow("decontam", "eval sets against the deduplicated pool", None, None, None, "not modelled yet (small)"),
        PlanRow("retrieve", f"{len(config.retrieve.sources)} source rows", None, None, None, "not modelled yet"),
        PlanRow("curated", "copy the retrieved images into shards", None, None, None, "not modelled yet"),
    ]
    return rows


def render(rows: list[PlanRow], pool: float, fleet: Fleet) -> str:
    fleet_text = f"{fleet.gpus} x {fleet.gpu} GPUs, {fleet.cpus} CPU cores" if fleet.gpu else f"{fleet.cpus} CPU cores"
    lines = [f"plan: {pool:.3g} pool images on {fleet_text}", ""]
    for row in rows:
        cost = f"{row.device_hours:,.1f} device-h, {row.wall_hours:,.2f} h wall" if row.wall_hours is not None else "?"
        rate = f"{row.rate.value:,.1f} {row.rate.unit} [{row.rate.cite()}]" if row.rate else ""
        lines.append(f"  {row.stage:<18} {row.work}")
        lines.append(f"  {'':<18} {cost}  {rate}  {row.note}".rstrip())
    known = [r.wall_hours for r in rows if r.wall_hours is not None]
    unknown = [r.stage for r in rows if r.wall_hours is None]
    lines += [
        "",
        f"modelled wall time: {sum(known):,.1f} h" + (f" + unmeasured stages: {', '.join(unknown)}" if unknown else ""),
    ]
    lines.append(f"reference: {PAPER}")
    return "\n".join(lines)
