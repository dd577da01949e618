"""Config paths as URLs: `file://` everywhere, and fsspec's in-memory file system standing in for an
object store (a real non-local fsspec file system, so no code path can fall back to `open()`)."""

from __future__ import annotations

import io
import shutil
import tarfile
import uuid
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
import torch

from curation.pipeline import curate
from curation.run_config import load_curation_config
from foundation.config import validate_tree
from foundation.errors import ConfigError
from foundation.storage import location, posix_path
from models.checkpoint import CheckpointError, read_state_dict
from tests.stage_output import stage_files
from tests.train_fixtures import tiny_train_tree, write_concept_shards
from training.config import TrainConfig
from training.data import loader_for, shard_urls
from training.train_loop import train

POOL_SAMPLE = 80  # files of the crawl's pool copied to "object storage": oddities and faults included


@pytest.fixture
def bucket():
    """A fresh memory:// prefix, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"bucket-{uuid.uuid4().hex[:8]}"
    yield fs, root
    fs.rm(root, recursive=True)


def upload(fs, local: Path, remote: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.pipe(f"{remote}/{path.relative_to(local)}", path.read_bytes())


def test_paths_resolve_and_urls_stay_urls(tmp_path):
    assert location("file:///data/x.tar") == Path("/data/x.tar")
    assert location("shards", tmp_path) == tmp_path / "shards"
    assert str(location("memory://bucket/shards/{000..002}.tar")) == "memory://bucket/shards/{000..002}.tar"
    assert posix_path("file:///runs/a") == Path("/runs/a")
    with pytest.raises(ConfigError, match="POSIX file system"):
        posix_path("memory://bucket/run")
    with pytest.raises(ConfigError, match=r"key 'run\.output_dir'.*atomic renames"):
        validate_tree(TrainConfig, tiny_train_tree("memory://b/shards", "memory://b/out"), "test.yaml")


def _pool_sample(crawl: Path, out: Path) -> Path:
    files = sorted(p for p in (crawl / "pool").rglob("*") if p.is_file())[:POOL_SAMPLE]
    for path in files:
        target = out / path.relative_to(crawl / "pool")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return out


def _ingested(run_dir: Path) -> tuple[list[tuple], list[str]]:
    """What ingest made of its inputs, independent of where they were read from."""
    index = pq.read_table(run_dir / "ingest" / "index.parquet").to_pylist()
    quarantine = pq.read_table(run_dir / "ingest" / "quarantine.parquet").to_pylist()
    return (
        sorted((r["width"], r["height"], r["original_mode"]) for r in index),
        sorted(r["reason"] for r in quarantine),
    )


def test_ingest_reads_folders_and_tars_from_object_storage(crawl, bucket, tmp_path):
    fs, root = bucket
    local = _pool_sample(crawl, tmp_path / "pool")
    upload(fs, local, f"{root}/pool")
    members = sorted(p for p in local.rglob("*") if p.is_file())[:20]
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for path in members:
            tar.add(path, arcname=str(path.relative_to(local)))
        escape = tarfile.TarInfo("../escape.jpg")
        escape.size = 3
        tar.addfile(escape, io.BytesIO(b"abc"))
    fs.pipe(f"{root}/tars/part-0.tar", tar_bytes.getvalue())

    def run(name: str, sources: str) -> Path:
        config = load_curation_config(crawl / "curation.yaml", [f"ingest.sources={sources}", "ingest.workers=1"])
        curate(config, tmp_path / name, ("ingest",), executor="local")
        return tmp_path / name

    local_run = run("local", f"[{{kind: folder, path: {local}}}]")
    remote_run = run("remote", f"[{{kind: folder, path: 'memory://{root}/pool'}}]")
    assert _ingested(remote_run) == _ingested(local_run)
    sources = pq.read_table(remote_run / "ingest" / "index.parquet", columns=["source"]).column("source").to_pylist()
    assert sources and all(s.startswith(f"memory://{root}/pool/") for s in sources)

    tar_run = run("tar", f"[{{kind: tar, path: 'memory://{root}/tars'}}]")
    ingested, reasons = _ingested(tar_run)
    assert len(ingested) + len(reasons) == len(members) + 1 and "unsafe_tar_member" in reasons


def test_file_urls_give_the_same_run_as_local_paths(crawl, tmp_path):
    local = _pool_sample(crawl, tmp_path / "pool")
    outputs = {}
    for name, prefix in (("plain", ""), ("url", "file://")):
        config = load_curation_config(
            crawl / "curation.yaml",
            [f"ingest.sources=[{{kind: folder, path: '{prefix}{local}'}}]", f"run.dir={prefix}{tmp_path / name}"],
        )
        run_dir = config.run_dir()
        assert run_dir == config.run_dir(f"{prefix}{tmp_path / name}") == tmp_path / name  # also as --run-dir
        curate(config, run_dir, ("ingest", "embed"), executor="local")
        outputs[name] = {stage: stage_files(run_dir, stage) for stage in ("ingest", "embed")}
    assert outputs["url"] == outputs["plain"]


def test_checkpoints_load_from_object_storage(bucket):
    fs, root = bucket
    state = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(2)}
    buffer = io.BytesIO()
    torch.save({"model": state}, buffer)
    fs.pipe(f"{root}/ckpt.pth", buffer.getvalue())
    loaded = read_state_dict(f"memory://{root}/ckpt.pth")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(f"memory://{root}/missing.pth")


def test_training_reads_shards_from_object_storage_and_writes_to_a_file_url(bucket, tmp_path):
    fs, root = bucket
    upload(fs, write_concept_shards(tmp_path / "curated", images=32, per_shard=16), f"{root}/curated")
    assert shard_urls(f"memory://{root}/curated") == [f"memory://{root}/curated/00000{i}.tar" for i in (0, 1)]
    tree = tiny_train_tree(f"memory://{root}/curated", f"file://{tmp_path / 'out'}", run={"max_steps": 2})
    config = validate_tree(TrainConfig, tree, "test.yaml")
    batch = next(iter(loader_for(config, rank=0, start_step=0)))
    assert tuple(batch.global_crops.shape) == (8, 3, 32, 32)
    result = train(config)
    assert result.steps == 2 and (tmp_path / "out" / "checkpoints" / "step_00000002").is_dir()


def test_url_lists_and_reference_sets_are_found_on_object_storage(bucket):
    import pyarrow as pa

    from curation.sources import FolderSource, TarSource, UrlSource, source_for_path

    fs, root = bucket
    table = io.BytesIO()
    pq.write_table(pa.table({"url": ["http://a/1.jpg", "http://a/2.jpg"]}), table)
    fs.pipe(f"{root}/urls.parquet", table.getvalue())
    fs.pipe(f"{root}/urls.txt", b"http://b/1.jpg\n\nhttp://b/2.jpg\n")
    assert UrlSource(path=f"memory://{root}/urls.parquet")._read_urls().to_pylist() == [
        "http://a/1.jpg",
        "http://a/2.jpg",
    ]
    assert UrlSource(path=f"memory://{root}/urls.txt")._read_urls().to_pylist() == ["http://b/1.jpg", "http://b/2.jpg"]
    fs.pipe(f"{root}/seeds/cats/000000.tar", b"")
    fs.pipe(f"{root}/seeds/dogs/a.jpg", b"")
    assert isinstance(source_for_path(location(f"memory://{root}/seeds/cats")), TarSource)
    assert isinstance(source_for_path(location(f"memory://{root}/seeds/dogs")), FolderSource)
