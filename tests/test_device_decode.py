"""Decoding beside the model (nvjpeg on GPU) gives the CPU path's embeddings, to cosine >= 0.999.

torchvision's and TorchCodec's decoders run on CPU tensors too, so this is the GPU path's own code
with `device="cpu"`: the same batch decode, the same resize and crop, the same fallback.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from curation.embed import read_embeddings
from curation.pipeline import curate
from curation.run_config import load_curation_config
from foundation.errors import ConfigError
from foundation.executors import prefetched
from models.embedders import create_embedder, device_decode
from models.embedders.device_decode import decode_batch
from models.embedders.jpeg_decoders import DECODERS, JpegDecoder, jpeg_decoder
from tests.conftest import TORCHCODEC_LOADS
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


def test_each_library_decodes_ingested_files_to_pils_pixels(crawl_jpegs, jpeg_decoder):
    """On the CPU both libraries are libjpeg, as PIL is: the same pixels, so switching library (as a
    torchvision without decoders forces) leaves the CPU-tested embeddings as they are."""
    data = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in crawl_jpegs]
    for image, jpeg in zip(jpeg_decoder.decode(data, torch.device("cpu")), crawl_jpegs, strict=True):
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(Image.open(io.BytesIO(jpeg)))))


def test_torchcodec_loads_with_torch_2_11_or_newer_and_torchvision_decodes_otherwise():
    """TorchCodec is a dependency on every torch; below 2.11 its library refuses to load (OSError),
    and the stage must then decode with torchvision's, not fail."""
    assert (DECODERS["torchcodec"]() is not None) == TORCHCODEC_LOADS
    if not TORCHCODEC_LOADS:
        assert jpeg_decoder().name == "torchvision"


def test_the_first_library_that_loads_decodes(monkeypatch):
    loads = dict.fromkeys(DECODERS, True)
    for name in DECODERS:
        monkeypatch.setitem(
            DECODERS, name, lambda name=name: JpegDecoder(name, lambda data, device: data) if loads[name] else None
        )
    jpeg_decoder.cache_clear()
    try:
        assert jpeg_decoder().name == "torchvision"
        jpeg_decoder.cache_clear()
        loads["torchvision"] = False  # a torchvision without its image decoders
        assert jpeg_decoder().name == "torchcodec"
        jpeg_decoder.cache_clear()
        loads["torchcodec"] = False
        with pytest.raises(ConfigError, match="install torchcodec"):
            jpeg_decoder()
    finally:
        jpeg_decoder.cache_clear()


def test_a_file_the_decoder_refuses_takes_the_cpu_path_not_the_batch_down(crawl_jpegs, jpeg_decoder):
    embedder = create_embedder("tiny")
    buffer = io.BytesIO()
    Image.new("RGB", (80, 70), (10, 200, 30)).save(buffer, format="PNG")  # not a JPEG: nvjpeg refuses it
    files = [crawl_jpegs[0], buffer.getvalue(), crawl_jpegs[1]]
    pixels = decode_batch(files, embedder.preprocess, torch.device("cpu"), decoder=jpeg_decoder)
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

    # Decoded a part at a time, each part at most DECODE_BYTES of full-size pixels (or one image).
    budget = 3 * (2 * 1024 * 768 + 500 * 375)
    monkeypatch.setattr("models.embedders.device_decode.DECODE_BYTES", budget)
    parts, decode = [], device_decode._decode

    def noting_the_part(data, device, decoder):
        images = decode(data, device, decoder)
        parts.append([image.numel() for image in images])
        return images

    monkeypatch.setattr("models.embedders.device_decode._decode", noting_the_part)
    assert torch.equal(decode_batch(files, preprocess, torch.device("cpu"), group=group), alone)
    assert all(sum(part) <= budget or len(part) == 1 for part in parts), parts
    assert [3 * 2100 * 1600] in parts  # over the budget alone
    assert sum(len(part) for part in parts) == len(files) - 1  # each JPEG once; the PNG is refused


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


def corrupted_reads(decode: Callable[[], object], shape: tuple[int, int, int], rounds: int = 10) -> int:
    """How many reads of freed memory, still queued on the current stream behind a spinning kernel,
    see other bytes than were written there once `decode()` has run: what nvjpeg overwrote."""
    value, bad = 7, 0
    for _ in range(rounds):
        blocks = [torch.full(shape, value, dtype=torch.uint8, device="cuda") for _ in range(8)]
        torch.cuda._sleep(100_000_000)  # tens of milliseconds: the reads below wait behind it
        sums = torch.stack([block.sum(dtype=torch.int64) for block in blocks])
        del blocks  # the allocator may hand these blocks out again at once, their reads still queued
        decode()
        bad += int((sums != value * np.prod(shape)).sum())
    return bad


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="nvjpeg needs a CUDA GPU")


@pytest.fixture
def web_size_jpegs() -> list[bytes]:
    """Eight baseline 500×375 JPEGs: the files nvjpeg's hardware engine decodes."""
    rng = np.random.default_rng(0)
    files = []
    for _ in range(8):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        files.append(buffer.getvalue())
    return files


@needs_cuda
@pytest.mark.xfail(reason="the hazard decode_batch guards against (pytorch/vision#9606, meta-pytorch/torchcodec#1634)")
def test_the_librarys_own_gpu_decode_overwrites_memory_that_queued_kernels_still_read(web_size_jpegs, jpeg_decoder):
    """Whether this GPU and library have the hazard at all: if this passes (XPASS), the test
    below cannot tell a guarded decode from an unguarded one here."""
    data = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in web_size_jpegs]
    device = torch.device("cuda")
    with torch.cuda.stream(torch.cuda.Stream()):  # as the embed worker's decode stream
        jpeg_decoder.decode(data, device)  # nvjpeg's start-up, outside the measured rounds
        assert corrupted_reads(lambda: jpeg_decoder.decode(data, device), (3, 375, 500)) == 0


@needs_cuda
def test_gpu_decoding_never_overwrites_memory_that_queued_kernels_still_read(web_size_jpegs, jpeg_decoder):
    """nvjpeg writes its output without waiting for the caller's stream, into blocks the caller's
    stream may have freed with reads still queued. `decode_batch` must leave those reads their
    bytes, and give the pixels it gives when nothing else is queued."""
    preprocess, device = create_embedder("tiny").preprocess, torch.device("cuda")
    with torch.cuda.stream(torch.cuda.Stream()):
        expected = decode_batch(web_size_jpegs, preprocess, device, decoder=jpeg_decoder).cpu()
        decoded = []
        decode = lambda: decoded.append(decode_batch(web_size_jpegs, preprocess, device, decoder=jpeg_decoder))  # noqa: E731
        assert corrupted_reads(decode, (3, 375, 500)) == 0
    assert all(torch.equal(pixels.cpu(), expected) for pixels in decoded)
