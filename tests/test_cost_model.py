"""`--plan`: stage costs computed from recorded measurements, each figure citing its source."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from curation import cost_model, measurements
from curation.measurements import Measurement, latest, load
from curation.run_config import CurationConfig
from curation.sources import FolderSource
from foundation.config import load_config
from foundation.errors import ConfigError

LVD142M = Path(__file__).resolve().parents[1] / "configs" / "curation" / "lvd142m.yaml"


def _m(metric: str, value: float, subject: str, device: str = "NVIDIA H100 80GB HBM3", cores: int = 16) -> Measurement:
    return Measurement("bench.py", metric, value, "per s", subject, device, cores, "2026-11-25", "abcdef123456", "cmd")


@pytest.fixture(scope="module")
def config() -> CurationConfig:
    return load_config(CurationConfig, LVD142M)


def test_fleet_parsing():
    assert cost_model.Fleet.parse("20x8xV100", None) == cost_model.Fleet(160, "V100", 1920, 8)
    assert cost_model.Fleet.parse("8xH100", 64) == cost_model.Fleet(8, "H100", 64, 8)
    assert cost_model.Fleet(16, "H100", 96).driver_gpus == 16  # no node count: one node
    assert cost_model.Fleet.parse(None, 4) == cost_model.Fleet(0, None, 4)
    with pytest.raises(ConfigError, match="COUNTxKIND"):
        cost_model.Fleet.parse("H100", None)


def test_the_latest_measurement_of_a_day_is_the_last_recorded():
    earlier, later = _m("dedup.rate", 1.0, "ivf_pq@1000"), _m("dedup.rate", 2.0, "ivf_pq@1000")
    assert latest([earlier, later], "dedup.rate", "ivf_pq@1000", "H100") is later


def test_a_gpu_kinds_rates_come_from_that_kind_only():
    sxm, pcie = _m("embed.images_per_s", 1200.0, "m"), _m("embed.images_per_s", 900.0, "m", "NVIDIA H100 PCIe")
    on_cpu = _m("embed.images_per_s", 5.0, "m", "cpu")
    results = [sxm, pcie, on_cpu]
    assert latest(results, "embed.images_per_s", "m", "H100") is sxm  # the PCIe one is later, and slower
    assert latest(results, "embed.images_per_s", "m", "H100-PCIe") is pcie
    assert latest(results, "embed.images_per_s", "m", "H200") is None
    assert latest(results, "embed.images_per_s", "m", "cpu") is on_cpu


def test_plan_arithmetic_follows_the_measured_rates(config):
    retrieval_model = config.embed.models["retrieval"].name
    results = [
        _m("ingest.images_per_s_per_worker", 2000, "ingest", device="cpu", cores=2),
        _m("embed.images_per_s", 1000, retrieval_model),
        _m("dedup.knn_vectors_per_s", 1e5, "ivf_pq@1000000"),
        _m("dedup.knn_vectors_per_s", 4e5, "ivf_pq@100000"),  # same day, smaller size: not the base
        _m("dedup.knn_vectors_per_s", 3e3, "ivf_pq@100000", device="cpu", cores=2),  # other device: ignored
    ]
    fleet = cost_model.Fleet(8, "H100", 96)
    rows = {r.stage: r for r in cost_model.plan(config, 1.2e9, fleet, results)}
    assert rows["ingest"].device_hours == pytest.approx(1.2e9 / 2000 / 3600)
    assert rows["ingest"].wall_hours == pytest.approx(1.2e9 / 2000 / 3600 / 96)
    assert rows["embed (retrieval)"].device_hours == pytest.approx(1.2e9 / 1000 / 3600)
    assert rows["embed (retrieval)"].wall_hours == pytest.approx(1.2e9 / 1000 / 3600 / 8)
    assert rows["dedup"].device_hours == pytest.approx(1.2e9 * math.sqrt(1200) / 1e5 / 3600)
    assert rows["embed (copy)"].rate is None and "benchmarks/embed.py" in rows["embed (copy)"].note
    text = cost_model.render(list(rows.values()), 1.2e9, fleet)
    assert "bench.py 2026-11-25 @abcdef12 on NVIDIA H100 80GB HBM3" in text  # each figure names its source
    assert "estimated, not measured: embed (copy), decontam, retrieve" in text and "20 nodes x 8 V100" in text
    assert "unmeasured stages: curated" in text


def test_the_drivers_listing_adds_its_hours_to_ingest_whatever_the_fleet(config):
    ingest = _m("ingest.images_per_s_per_worker", 2000, "ingest", device="cpu", cores=2)
    listing = _m("ingest.listing_inputs_per_s", 400_000, "folder", device="cpu", cores=2)
    for fleet in (cost_model.Fleet(8, "H100", 96), cost_model.Fleet(0, None, 4000)):
        row = cost_model.plan(config, 1.2e9, fleet, [ingest, listing])[0]
        assert row.wall_hours == pytest.approx(1.2e9 / 2000 / 3600 / fleet.cpus + 1.2e9 / 400_000 / 3600)
        assert "plus 0.83 h listing every input in the driver first, 400,000 inputs/s" in row.note
    assert "listing: not measured" in cost_model.plan(config, 1.2e9, fleet, [ingest])[0].note


def test_decode_cores_follow_the_fastest_embed_pass_and_the_measured_rates(config):
    fleet = cost_model.Fleet(8, "H100", 96)
    copy_model = config.embed.models["copy"].name
    results = [
        _m("embed.images_per_s", 4000, copy_model),  # the fastest pass: 4,000 images/s per GPU
        _m("decode.images_per_s_per_core", 500, "decode", device="cpu", cores=2),
        _m("embed.core_seconds_per_image", 0.0004, "decode=device"),
    ]
    rows = cost_model.plan(config, 1.2e9, fleet, results)
    on_cpu, on_gpu = cost_model.decode_cores(rows, 1.2e9, fleet, results).splitlines()
    assert "64 CPU cores (8.0 per GPU)" in on_cpu  # 8 × 4,000 images/s over 500 per core
    assert "13 CPU cores (1.6 per GPU)" in on_gpu and "0.40 core-ms per image" in on_gpu
    without = cost_model.decode_cores(rows, 1.2e9, fleet, results[:2]).splitlines()[1]
    assert "no measurement on H100" in without and "gpu_check.sh --record embed" in without


def test_without_a_gpu_record_a_stage_is_estimated_from_its_flops(config):
    rows = {r.stage: r for r in cost_model.plan(config, 1.2e9, cost_model.Fleet(8, "H100", 96), [])}
    embed = rows["embed (retrieval)"]  # timm:vit_huge_patch14_224: 323.8 GFLOPs an image
    assert embed.basis == "estimate" and embed.rate is None
    assert embed.device_hours == pytest.approx(1.2e9 * 323.8e9 / (0.4 * 989.4e12) / 3600)
    assert embed.wall_hours == pytest.approx(embed.device_hours / 8)
    clusters = config.retrieve.clusters
    flops = (20 * 256 * clusters + 1.2e9) * clusters * 2 * 1280
    assert rows["retrieve"].device_hours == pytest.approx(flops / (0.5 * 66.9e12) / 3600)
    assert rows["ingest"].basis == "missing" and rows["curated"].basis == "missing"


def test_retrieve_k_means_runs_on_the_driver_nodes_gpus_and_counts_balanced_rows(config):
    """The k-means is the driver's own work: on one node's GPUs, not the fleet's. A balanced row adds
    its levels' k-means with a pass over the level's points per resampling step, its training sample,
    and its driver's figure where that is the larger."""
    fleet = cost_model.Fleet.parse("20x8xV100", None)
    rows = {r.stage: r for r in cost_model.plan(config, 1.2e9, fleet, [])}
    assert rows["retrieve"].wall_hours == pytest.approx(rows["retrieve"].device_hours / 8)
    assert rows["dedup"].wall_hours == pytest.approx(rows["dedup"].device_hours / 160)  # search tasks: the fleet
    assert "on its node's 8 GPUs" in rows["retrieve"].note
    balanced = {"kind": "balanced", "images": 1000, "levels": [1000, 100], "resampling_steps": 2, "resample_points": 5}
    tree = config.model_dump(mode="json")
    tree["retrieve"]["sources"].append({"name": "web", "strategy": balanced})
    with_balanced = CurationConfig.model_validate(tree)
    level_0 = (20 * 256_000 + 2 * (1.2e9 + 20 * 5_000) + 1.2e9) * 1000
    level_1 = (20 * 1000 + 2 * (1000 + 20 * 500) + 1000) * 100
    extra = {r.stage: r for r in cost_model.plan(with_balanced, 1.2e9, fleet, [])}["retrieve"]
    flops = (level_0 + level_1) * 2 * 1280
    assert extra.device_hours - rows["retrieve"].device_hours == pytest.approx(flops / (0.5 * 15.7e12) / 3600)
    assert "web: hierarchical k-means into [1000, 100] clusters, 2 resampling steps" in extra.work
    results = [
        _m("retrieve.driver_bytes_per_image", 100, "d@128", device="cpu", cores=2),
        _m("retrieve.balanced_bytes_per_image", 130, "d@128", device="cpu", cores=2),
    ]
    plain = {r.stage: r for r in cost_model.plan(config, 1e9, fleet, results)}["retrieve"]
    both = {r.stage: r for r in cost_model.plan(with_balanced, 1e9, fleet, results)}["retrieve"]
    assert both.memory - plain.memory == pytest.approx(1e9 * 30)  # the sample: cluster rows' 256 x 100K is larger
    tree["retrieve"]["sources"][-1]["strategy"]["levels"] = [400_000, 100]
    finer = CurationConfig.model_validate(tree)
    fine = {r.stage: r for r in cost_model.plan(finer, 1e9, fleet, results)}["retrieve"]
    assert fine.memory - both.memory == pytest.approx(256 * 300_000 * 4 * 1280)
    assert "web's finest k-means' training sample" in fine.memory_note


def test_cpu_rates_are_per_machine_and_spread_over_cores(config):
    results = [
        _m("embed.images_per_s", 100, config.embed.models["retrieval"].name, device="cpu", cores=4),
        _m("dedup.knn_vectors_per_s", 8e3, "ivf_pq@1000000", device="cpu", cores=2),
        _m("assemble.images_per_s_per_worker", 500, "assemble", device="cpu", cores=2),
    ]
    rows = {r.stage: r for r in cost_model.plan(config, 4e6, cost_model.Fleet(0, None, 40), results)}
    assert rows["embed (retrieval)"].device_hours == pytest.approx(4e6 / 25 / 3600)  # 25 images/s per core
    assert rows["embed (retrieval)"].wall_hours == pytest.approx(4e6 / 25 / 3600 / 40)
    core_hours = 4e6 * 2 / 4e3 / 3600  # per-query cost doubles from 1M to 4M; 4,000 vectors/s per core
    assert (rows["dedup"].device_hours, rows["dedup"].wall_hours) == pytest.approx((core_hours, core_hours / 40))
    curated = config.retrieve.expected_total()
    assert rows["curated"].device_hours == pytest.approx(curated / 500 / 3600)  # one task per shard, a core each
    assert rows["curated"].wall_hours == pytest.approx(curated / 500 / 3600 / 40)
    assert rows["curated"].note == "40 CPU workers (core-hours)"
    results.append(_m("assemble.plan_bytes_per_image", 2**30 / 1e6, "assemble", device="cpu", cores=2))
    rows = {r.stage: r for r in cost_model.plan(config, 4e6, cost_model.Fleet(0, None, 40), results)}
    assert rows["curated"].memory == pytest.approx(curated * 2**30 / 1e6)


def test_stages_that_hold_the_whole_pool_in_one_process_state_its_memory(config):
    """Ingest's listing per input (a URL source's, for lvd142m's URL list); the dedup driver measured at one width with IVF-PQ: its bytes
    beyond the index entry carry over, each stage's own index entry (kind, role's width) and its
    largest training sample are added; dedup adds its graph, at least the paper's 1.2B -> 1.1B
    removed images' edges; retrieve's and decontam's own measurements replace dedup's once there are."""
    fleet = cost_model.Fleet(8, "H100", 96)
    unmeasured = {r.stage: r for r in cost_model.plan(config, 1e9, fleet, [])}
    assert unmeasured["dedup"].memory is None
    assert "run python benchmarks/memory.py --record" in unmeasured["dedup"].memory_note
    results = [
        _m("dedup.driver_bytes_per_image", 128 / 16 + 8 + 90, "d@128", device="cpu", cores=2),
        _m("ingest.images_per_s_per_worker", 1000, "ingest", device="cpu", cores=2),
        _m("ingest.listing_bytes_per_input", 300, "ingest", device="cpu", cores=2),
        _m("ingest.listing_bytes_per_input", 500, "urls", device="cpu", cores=2),
    ]
    rows = {r.stage: r for r in cost_model.plan(config, 1e9, fleet, results)}
    assert rows["ingest"].memory == pytest.approx(1e9 * 500) and "every URL" in rows["ingest"].memory_note
    folders = config.model_copy(
        update={"ingest": config.ingest.model_copy(update={"sources": [FolderSource(path="/crawl")]})}
    )
    assert next(r for r in cost_model.plan(folders, 1e9, fleet, results) if r.stage == "ingest").memory == 1e9 * 300
    samples = {"dedup": 1e6, "decontam": 1e6, "retrieve": 256 * 100_000}  # lvd142m: train_size, and 100K clusters
    for stage, section in {"dedup": config.dedup, "decontam": config.decontam, "retrieve": config.retrieve}.items():
        dim = cost_model._model(config.embed.models[section.role].name)[1]
        entry = dim / 16 + 8 if section.index.kind == "ivf_pq" else 4 * dim
        assert rows[stage].memory == pytest.approx(1e9 * (entry + 90) + samples[stage] * 4 * dim), stage
        assert "as dedup's driver measured" in rows[stage].memory_note
        assert f"{cost_model.size(1e9 * 4 * dim)} of scratch disk" in rows[stage].memory_note
        copies = f"each search task copies the index's fast-scan codes, {cost_model.size(1e9 * (dim / 16 + 8))}"
        assert (copies in rows[stage].memory_note) == (stage != "decontam"), stage
    without_graph = {r.stage: r for r in cost_model.plan(config, 1.2e9, fleet, results)}
    results.append(_m("dedup.driver_bytes_per_edge", 10, "dedup", device="cpu", cores=2))
    with_graph = {r.stage: r for r in cost_model.plan(config, 1.2e9, fleet, results)}
    assert with_graph["dedup"].memory == pytest.approx(without_graph["dedup"].memory + 1e8 * 10)  # an edge a removal
    most = f"up to k/2 an image in a pool of copies, {cost_model.size(1.2e9 * 32 * 10)}"
    assert most in with_graph["dedup"].memory_note
    assert with_graph["decontam"].memory == without_graph["decontam"].memory
    results.append(_m("retrieve.driver_bytes_per_image", 128 / 16 + 8 + 150, "d@128", device="cpu", cores=2))
    own = {r.stage: r for r in cost_model.plan(config, 1e9, fleet, results)}
    assert own["retrieve"].memory == pytest.approx(rows["retrieve"].memory + 1e9 * 60)
    assert "as retrieve's driver measured" in own["retrieve"].memory_note
    assert own["decontam"].memory == rows["decontam"].memory
    results.append(_m("decontam.driver_bytes_per_image", 128 / 16 + 8 + 40, "d@128", device="cpu", cores=2))
    own = {r.stage: r for r in cost_model.plan(config, 1e9, fleet, results)}
    assert own["decontam"].memory == pytest.approx(rows["decontam"].memory - 1e9 * 50)
    assert "as decontam's driver measured" in own["decontam"].memory_note
    text = cost_model.render(list(rows.values()), 1e9, fleet, results)
    largest = max(rows.values(), key=lambda r: r.memory or 0)
    assert f"largest process: at least {cost_model.size(largest.memory)} ({largest.stage})" in text
    assert cost_model.size(2**30 * 1023) == "1,023.0 GiB" and cost_model.size(2**40 * 8.6) == "8.6 TiB"


def test_results_file_round_trips(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(asdict(_m("embed.images_per_s", 5.0, "tiny"))) + "\n")
    assert load(path) == [_m("embed.images_per_s", 5.0, "tiny")]


def test_a_measurement_names_its_commit_on_a_copied_tree_without_git(tmp_path, monkeypatch):
    """A GPU machine gets the tree without .git, maybe without git: LVD_COMMIT names the commit."""
    monkeypatch.setattr(measurements, "RESULTS", tmp_path / "results.jsonl")
    monkeypatch.setenv("LVD_COMMIT", "f187a69b")
    given = measurements.record("benchmarks/embed.py", "embed.images_per_s", 954.5, "images/s", "vit")
    monkeypatch.delenv("LVD_COMMIT")
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on this machine
    unnamed = measurements.record("benchmarks/embed.py", "embed.images_per_s", 954.5, "images/s", "vit")
    assert (given.commit, unnamed.commit) == ("f187a69b", "unknown")
    assert load(tmp_path / "results.jsonl") == [given, unnamed]


def test_plan_from_the_command_line(capsys):
    from pipelines.curate import main

    assert main([str(LVD142M), "--plan", "--pool-size", "1.2e9", "--gpus", "8xH100"]) == 0
    out = capsys.readouterr().out
    assert "plan: 1.2e+09 pool images on 8 x H100 GPUs" in out and "kNN graph (k=64)" in out
    figures = [line for line in out.splitlines() if line.strip().startswith("[")]
    assert len(figures) == 7 and all("device-h" in line for line in figures), out  # every stage has hours
    assert "total:" in out and "GPU-hours" in out and "decode cores, embed.decode=device:" in out
