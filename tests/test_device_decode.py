"""Decoding beside the model (nvjpeg on GPU) gives the CPU path's embeddings, to cosine >= 0.999.

torchvision's `decode_jpeg` runs on CPU tensors too, so this is the GPU path's own code with
`device="cpu"`: the same batch decode, the same resize and crop, the same fallback.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from curation.embed import read_embeddings
from curation.pipeline import curate
from curation.run_config import load_curation_config
from foundation.executors import prefetched
from models.embedders import create_embedder
from models.embedders.device_decode import decode_batch
from tests.stage_output import run_dir_with


@pytest.fixture(scope="module")
def crawl_jpegs(crawl, pool_truth) -> list[bytes]:
    """32 pool files that ingest keeps byte for byte (RGB JPEGs of the crawl's usual sizes)."""
    found = []
    for row in pool_truth:
        data = (crawl / row["path"]).read_bytes()
        if not row["broken_reason"] and not row["oddity"] and data[:2] == b"\xff\xd8":
            found.append(data)
    return found[:32]


@pytest.mark.parametrize(
    ("name", "weights"),
    [("tiny", None), ("tiny:semantic", None), ("timm:vit_tiny_patch16_224", "random"), ("dinov2:vits14", "random")],
)
def test_device_decoding_gives_the_cpu_paths_embeddings(crawl_jpegs, name, weights):
    torch.manual_seed(0)
    embedder = create_embedder(name, weights=weights)
    on_cpu = embedder(np.stack([embedder.preprocess.from_jpeg(data) for data in crawl_jpegs]))
    on_device = embedder(decode_batch(crawl_jpegs, embedder.preprocess, torch.device("cpu")))
    cosine = (on_cpu * on_device).sum(-1)
    assert float(cosine.min()) >= 0.999, float(cosine.min())


def test_a_file_the_decoder_refuses_takes_the_cpu_path_not_the_batch_down(crawl_jpegs):
    embedder = create_embedder("tiny")
    buffer = io.BytesIO()
    Image.new("RGB", (80, 70), (10, 200, 30)).save(buffer, format="PNG")  # not a JPEG: nvjpeg refuses it
    files = [crawl_jpegs[0], buffer.getvalue(), crawl_jpegs[1]]
    pixels = decode_batch(files, embedder.preprocess, torch.device("cpu"))
    assert pixels.shape == (3, 64, 64, 3)
    assert torch.equal(pixels[1], torch.from_numpy(embedder.preprocess.from_jpeg(files[1])))


@pytest.mark.parametrize("group", [2, 32])
def test_images_resized_together_match_those_resized_alone(group, monkeypatch):
    """On a GPU same-size images share one resize call (in groups of `GPU_GROUP`); each crop must be
    what it would be alone, whatever the mix of sizes, orders and refused files in its batch."""
    rng = np.random.default_rng(0)
    sizes = [(500, 375)] * 3 + [(375, 500), (1024, 768), (500, 375), (2100, 1600), (1024, 768), (375, 500)]
    files = []
    for width, height in sizes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        files.append(buffer.getvalue())
    png = io.BytesIO()
    Image.new("RGB", (90, 60), (200, 10, 30)).save(png, format="PNG")
    files.insert(4, png.getvalue())
    preprocess = create_embedder("tiny").preprocess
    together = decode_batch(files, preprocess, torch.device("cpu"), group=group)
    alone = torch.cat([decode_batch([data], preprocess, torch.device("cpu"), group=1) for data in files])
    assert torch.equal(together, alone)
    monkeypatch.setattr("models.embedders.device_decode.GROUP_PIXELS", 2 * 1024 * 768)  # large ones go 2 at a time
    assert torch.equal(decode_batch(files, preprocess, torch.device("cpu"), group=group), alone)


def test_the_stage_decoding_on_the_device_agrees_with_the_cpu_stage(crawl, tmp_path, monkeypatch):
    """...and in-process, it decodes on the prefetch threads, so decoding overlaps the model."""
    on_cpu = tmp_path / "cpu"
    curate(load_curation_config(crawl / "curation.yaml", ["embed.decode=cpu"]), on_cpu, ("ingest", "embed"))
    on_device = run_dir_with(on_cpu, tmp_path / "device", ("ingest",))
    on_main_thread = []

    def noting_the_thread(*args):
        on_main_thread.append(threading.current_thread() is threading.main_thread())
        return decode_batch(*args)

    monkeypatch.setattr("curation.embed.decode_batch", noting_the_thread)
    config = load_curation_config(crawl / "curation.yaml", ["embed.decode=device"])
    curate(config, on_device, ("embed",), executor="local")
    assert on_main_thread and not any(on_main_thread)
    keys, cpu = read_embeddings(on_cpu / "embed" / "retrieval" / "pool")
    device_keys, device = read_embeddings(on_device / "embed" / "retrieval" / "pool")
    assert keys == device_keys
    cosine = (cpu.astype(np.float32) * device.astype(np.float32)).sum(-1)
    assert float(cosine.min()) >= 0.999


def test_prefetched_reads_ahead_while_the_consumer_works():
    started, release = [], threading.Event()

    def read(i: int) -> int:
        started.append(i)
        return i

    items = prefetched(read, range(5), ahead=2)
    assert next(items) == 0
    for _ in range(100):  # the consumer holds item 0; items 1 and 2 are read meanwhile
        if {1, 2} <= set(started):
            break
        release.wait(0.01)
    assert {0, 1, 2} <= set(started) and 4 not in started
    assert list(items) == [1, 2, 3, 4]
