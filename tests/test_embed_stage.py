"""The embed stage on the synthetic crawl: complete, equal to a direct forward, with 1 or several Ray actors."""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import embed
from curation.embed import read_embeddings
from curation.embed_runner import check_complete
from curation.pipeline import curate
from curation.run_config import load_curation_config
from curation.shards import iter_samples
from foundation.errors import CorruptInput, StageError
from models.embedders import create_embedder
from tests.stage_output import curate_command, run_dir_with, stage_files, with_an_image_zeroed


@pytest.fixture(scope="module")
def embedded_run_and_calls(crawl, tmp_path_factory):
    """An in-process ingest + embed run, and the model loop's calls in order: ("launch" | "result",
    shard's parquet, batch), and ("build", model name) for each model built."""
    run_dir = tmp_path_factory.mktemp("embed") / "run"
    calls = []
    launch, result, build = embed.EmbedWorker.launch, embed.Launched.result, embed.EmbedderSpec.build

    def noting_build(self, device="cpu"):
        calls.append(("build", self.name))
        return build(self, device)

    def noting_launch(self, row):
        calls.append(("launch", row["out"], row["batch"]))
        return launch(self, row)

    def noting_result(self):
        calls.append(("result", self.row["out"], self.row["batch"]))
        return result(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embed.EmbedWorker, "launch", noting_launch)
        patch.setattr(embed.Launched, "result", noting_result)
        patch.setattr(embed.EmbedderSpec, "build", noting_build)
        curate(load_curation_config(crawl / "curation.yaml"), run_dir, ("ingest", "embed"), executor="local")
    return run_dir, calls


@pytest.fixture(scope="module")
def embedded_run(embedded_run_and_calls):
    return embedded_run_and_calls[0]


def direct_vectors(run_dir: Path, collection: str = "pool") -> dict[str, np.ndarray]:
    """Each ingested image through the tiny embedder one at a time, in this process."""
    embedder = create_embedder("tiny")
    folder = run_dir / "ingest" / ("" if collection == "pool" else collection)
    vectors = {}
    for shard in sorted(folder.glob("*.tar")):
        for key, sample in iter_samples(shard):
            pixels = embedder.preprocess.from_jpeg(sample["jpg"])
            vectors[key] = embedder(pixels[None]).numpy()[0]
    return vectors


def check_against_direct(run_dir: Path, direct: dict[str, np.ndarray], role: str = "copy") -> None:
    keys, vectors = read_embeddings(run_dir / "embed" / role / "pool")
    assert len(keys) == len(set(keys)) == len(direct), "a key is missing or repeated"
    cosines = np.array([vectors[i] @ direct[k] for i, k in enumerate(keys)])
    assert cosines.min() >= 0.999


def test_every_ingested_image_has_the_vector_of_a_direct_forward(embedded_run):
    index = pq.read_table(embedded_run / "ingest" / "index.parquet").column("key").to_pylist()
    direct = direct_vectors(embedded_run)
    assert set(direct) == set(index)
    check_against_direct(embedded_run, direct)
    for shard in (embedded_run / "embed" / "copy" / "pool").glob("*.parquet"):
        keys = pq.read_table(shard).column("key").to_pylist()
        assert keys == sorted(keys)
    table = pq.read_table(next((embedded_run / "embed" / "copy" / "pool").glob("*.parquet")))
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[272]"


def test_reference_sets_are_embedded_with_every_role(embedded_run, truth):
    for role in ("copy", "retrieval"):
        for name in {r["set"] for r in truth if r["role"] == "seed"}:
            keys, vectors = read_embeddings(embedded_run / "embed" / role / "seeds" / name)
            assert len(keys) == sum(r["set"] == name for r in truth) and vectors.shape[1] == 272


def test_planted_near_duplicates_are_nearest_neighbours(embedded_run, crawl, pool_truth):
    keys, vectors = read_embeddings(embedded_run / "embed" / "copy" / "pool")
    key_of_path = {r["source"]: r["key"] for r in pq.read_table(embedded_run / "ingest" / "index.parquet").to_pylist()}
    group = {
        key_of_path[str(crawl / r["path"])]: r["dup_group"] for r in pool_truth if str(crawl / r["path"]) in key_of_path
    }
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    nearest = similarity.argmax(1)
    copies = [i for i, k in enumerate(keys) if group[k]]
    hits = sum(group[keys[nearest[i]]] == group[keys[i]] for i in copies)
    assert hits / len(copies) >= 0.99


def test_in_process_the_next_batch_is_queued_before_the_last_ones_vectors_are_read(embedded_run_and_calls):
    """On a GPU, reading a batch's vectors waits for its forward; queueing the next forward first
    keeps the device busy through that wait and the shard writes that follow it."""
    run_dir, calls = embedded_run_and_calls
    calls = [call for call in calls if call[0] != "build"]
    launches = [call[1:] for call in calls if call[0] == "launch"]
    assert len(launches) >= 8 and len(launches) == len(set(launches))
    role = lambda batch: Path(batch[0]).relative_to(run_dir).parts[1]  # noqa: E731 (embed/<role>/...)
    for index, call in enumerate(calls):
        if call[0] == "result":  # the role's next batch was launched just before (but for its last)
            position = launches.index(call[1:])
            following = launches[position + 1 : position + 2]
            if following and role(following[0]) == role(call[1:]):
                assert calls[index - 1] == ("launch", *following[0])


def test_in_process_each_roles_model_is_built_once(embedded_run_and_calls):
    """The model that embeds also writes the role's card: no second copy is built for it (a ViT-H
    takes 15 s and 3 GB of CPU memory to build), and one role's model is built after the last's run."""
    run_dir, calls = embedded_run_and_calls
    steps = [
        f"build {call[1]}" if call[0] == "build" else Path(call[1]).relative_to(run_dir).parts[1] for call in calls
    ]
    assert steps.count("build tiny") == steps.count("build tiny:semantic") == 1
    assert [step for step, _ in itertools.groupby(steps)] == ["build tiny", "copy", "build tiny:semantic", "retrieval"]


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_an_image_damaged_after_ingest_stops_the_stage_with_its_key_and_shard(embedded_run, tmp_path, decode):
    shard = tmp_path / "000000.tar"
    key = with_an_image_zeroed(embedded_run / "ingest" / "000000.tar", shard)
    worker = embed.EmbedWorker(embed.EmbedderSpec())
    job = embed.ShardJob("pool", str(shard), str(tmp_path / "000000.parquet"), batch_size=4)
    with pytest.raises(CorruptInput) as raised:
        for row in embed.read_batches(job, worker.embedder.preprocess, jpegs=decode == "device"):
            worker(row)
    assert f"image {key} in {shard} no longer decodes" in str(raised.value)
    assert "`lvd verify RUN` names every damaged shard" in str(raised.value) and "re-run from ingest" in str(
        raised.value
    )


@pytest.mark.parametrize("cut", [700, 40_000], ids=["in a header", "in an image"])
def test_a_shard_truncated_after_ingest_stops_the_stage_naming_it(embedded_run, tmp_path, cut):
    shard = tmp_path / "000000.tar"
    shard.write_bytes((embedded_run / "ingest" / "000000.tar").read_bytes()[:cut])
    job = embed.ShardJob("pool", str(shard), str(tmp_path / "000000.parquet"), batch_size=4)
    with pytest.raises(CorruptInput, match=f"embed: {shard} can no longer be read .*re-run from ingest"):
        list(embed.read_batches(job, embed.Preprocess(), jpegs=True))


def test_a_shard_that_reads_short_after_ingest_fails_the_stage_with_what_to_do(embedded_run, tmp_path):
    # A header block zeroed on storage reads as the archive's end: the images after it are gone, silently.
    shard = tmp_path / "000000.tar"
    data = bytearray((embedded_run / "ingest" / "000000.tar").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        fifth = [m for m in tar if m.name.endswith(".jpg")][4]
    data[fifth.offset : fifth.offset + 512] = bytes(512)
    shard.write_bytes(bytes(data))
    assert len(embed.jpegs_of(str(shard))) == 4
    # So the stage writes that shard's parquet with 4 vectors; the check after it says why and what to do.
    role_dir = tmp_path / "copy"
    shutil.copytree(embedded_run / "embed" / "copy", role_dir)
    keys, vectors = read_embeddings(role_dir / "pool")
    first = pq.read_table(role_dir / "pool" / "000000.parquet").num_rows
    embed.write_embeddings(role_dir / "pool" / "000000.parquet", keys[:4], vectors[:4])
    with pytest.raises(StageError, match=f"000000.tar gave 4 of the {first} images ingest wrote .*--from ingest"):
        check_complete(embedded_run / "ingest", role_dir, "copy")


@pytest.mark.slow  # starts Ray: about a minute on 2 cores
def test_through_ray_a_damaged_image_is_told_in_one_line_naming_it(embedded_run, crawl, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(embedded_run / "ingest", run_dir / "ingest")
    (run_dir / "manifest.json").write_bytes((embedded_run / "manifest.json").read_bytes())
    shard = run_dir / "ingest" / "000000.tar"
    key = with_an_image_zeroed(shard, shard)
    command = curate_command(crawl / "curation.yaml", run_dir, "embed.decode=device", executor="ray")
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LVD_DEBUG": ""})
    assert result.returncode == 2, result.stderr  # the actor's error, not Ray Data's UserCodeException
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # among Ray's logs
    assert len(ours) == 1 and ours[0].startswith(f"error: embed: image {key} in {shard} no longer decodes"), ours
    assert result.stderr.rstrip().endswith("re-run from ingest (--from ingest)"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr  # Ray Data's logs of it stay in its log file


@pytest.mark.parametrize("actors", [pytest.param(1, marks=pytest.mark.slow), 2])  # 2 cores: keep the default run short
def test_ray_data_actor_pool(embedded_run, crawl, tmp_path, actors):
    run_dir = run_dir_with(embedded_run, tmp_path / f"actors{actors}", ("ingest",))
    command = curate_command(crawl / "curation.yaml", run_dir, f"embed.actors={actors}", executor="ray")
    subprocess.run([*command, "--only", "embed"], check=True, capture_output=True)
    check_against_direct(run_dir, direct_vectors(embedded_run))
    assert stage_files(run_dir, "embed") == stage_files(embedded_run, "embed")


def test_sigkill_mid_embed_then_rerun_is_byte_identical(crawl, tmp_path):
    overrides = ["ingest.shard_size=20", "embed.models.copy.batch_size=8", "embed.models.retrieval.batch_size=8"]
    config = load_curation_config(crawl / "curation.yaml", overrides)
    killed = tmp_path / "killed"
    curate(config, killed, ("ingest",), executor="local")
    fresh = run_dir_with(killed, tmp_path / "fresh", ("ingest",))
    command = curate_command(crawl / "curation.yaml", killed, *overrides)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, written = time.monotonic() + 120, []
    while time.monotonic() < deadline and len(written) < 10:
        written = sorted(killed.glob("embed.*.partial/copy/pool/*.parquet"))
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(written) >= 10 and not (killed / "embed").exists(), "the kill did not land mid-stage"
    mtimes = {p.name: p.stat().st_mtime_ns for p in written}

    subprocess.run(command, check=True, capture_output=True)
    curate(config, fresh, ("embed",), executor="local")
    assert stage_files(killed, "embed") == stage_files(fresh, "embed")
    for name, mtime in mtimes.items():
        assert (killed / "embed" / "copy" / "pool" / name).stat().st_mtime_ns == mtime, f"{name} was embedded again"


def peak_rss_of_embed(crawl: Path, pool: Path, run_dir: Path) -> int:
    """Peak RSS (KiB) of a process that runs only the embed stage over an already-ingested `pool`."""
    overrides = [
        f"ingest.sources=[{{kind: folder, path: {pool}}}]",
        "ingest.shard_size=10",
        "retrieve.sources=[]",
        "decontam.eval_sets=[]",
        "embed.models.copy.batch_size=10",
    ]
    curate(load_curation_config(crawl / "curation.yaml", overrides), run_dir, ("ingest",), executor="local")
    script = (
        "import resource; from pipelines.cli import app; "
        f"app(['embed', {str(crawl / 'curation.yaml')!r}, *{overrides!r}, '--run-dir', {str(run_dir)!r}], "
        "standalone_mode=False); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def test_memory_does_not_grow_with_the_number_of_shards(crawl, tmp_path):
    files = sorted(p for p in (crawl / "pool").rglob("*") if p.is_file())
    small = tmp_path / "small_pool"
    small.mkdir()
    for path in files[:200]:
        (small / path.name).symlink_to(path)
    small_rss = peak_rss_of_embed(crawl, small, tmp_path / "small")
    large_rss = peak_rss_of_embed(crawl, crawl / "pool", tmp_path / "large")  # 10x the shards and images
    assert large_rss <= 1.2 * small_rss, (small_rss, large_rss)


def test_embeddings_on_disk_map_the_same_vectors_and_keep_only_the_kept_keys(tmp_path):
    """The vector stages read the pool through a memory-mapped float32 file, written a shard at a
    time: the same rows as in memory, filtered by a key set, reused when a killed stage re-runs."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "pool"
    for part, keys in enumerate([["b", "a", "d"], [], ["c", "e"]]):
        embed.write_embeddings(folder / f"{part:06d}.parquet", keys, rng.standard_normal((len(keys), 8), np.float32))
    keys, vectors = read_embeddings(folder)
    mapped_keys, mapped = embed.embeddings_on_disk(folder, tmp_path / "scratch" / "vectors.npy")
    assert isinstance(mapped, np.memmap) and mapped_keys.to_pylist() == keys and np.array_equal(mapped, vectors)
    kept_keys, kept = embed.embeddings_on_disk(folder, tmp_path / "kept.npy", pa.array(["e", "b", "zz"]))
    assert kept_keys.to_pylist() == ["b", "e"] and np.array_equal(kept, vectors[[0, 4]])
    np.save(tmp_path / "kept.npy", np.zeros((2, 8), np.float32))  # finished before a kill: not written again
    assert not embed.embeddings_on_disk(folder, tmp_path / "kept.npy", pa.array(["e", "b"]))[1].any()
    none_kept = embed.embeddings_on_disk(folder, tmp_path / "none.npy", pa.array(["zz"]))
    assert len(none_kept[0]) == 0 and none_kept[1].shape == (0, 8) and not (tmp_path / "none.npy").exists()
