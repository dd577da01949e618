"""Shared fixtures: one synthetic crawl with known truth per test session, its loopback server, and
each JPEG library the embed stage can decode with."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from curation.synth.crawl import make_crawl
from curation.synth.server import serve_in_background
from models.embedders.jpeg_decoders import DECODERS, JpegDecoder

CRAWL_IMAGES = 2000


def pytest_configure(config: pytest.Config) -> None:
    """Ray runs in child processes only (the user's command, or a script). `ray.shutdown()` leaves
    Ray's native gRPC threads alive, and a test process that had started Ray crashed at its exit
    once (exit 139 after every test passed), so `ray.init` here refuses, naming the fix. (Where Ray
    is not installed, as on the GPU machines `benchmarks/gpu_check.sh` runs tests on, nothing can start it.)"""
    try:
        import ray
    except ImportError:
        return

    def refuse(*args, **kwargs):
        raise RuntimeError("start Ray in a child process (see tests/conftest.py), not in the test process")

    ray.init = refuse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2,000-image synthetic crawl whose URLs point at a loopback port reserved for `served_crawl`."""
    out = tmp_path_factory.mktemp("synth") / "crawl"
    return make_crawl(out, images=CRAWL_IMAGES, seed=0, base_url=f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="session")
def truth(crawl: Path) -> list[dict]:
    return pq.read_table(crawl / "truth.parquet").to_pylist()


@pytest.fixture(scope="session")
def pool_truth(truth: list[dict]) -> list[dict]:
    return [row for row in truth if row["role"] == "pool"]


@pytest.fixture(scope="session")
def served_crawl(crawl: Path):
    server = serve_in_background(crawl)
    yield crawl
    server.shutdown()
    server.server_close()


# TorchCodec's image decoders load with torch 2.11 or newer only (CI's lowest-versions leg runs torch
# 2.9); test_device_decode checks that it loads exactly there.
TORCHCODEC_LOADS = torch.__version__ >= "2.11"


@pytest.fixture(scope="session", params=[name for name in DECODERS if name != "torchcodec" or TORCHCODEC_LOADS])
def jpeg_decoder(request: pytest.FixtureRequest) -> JpegDecoder:
    """Each JPEG library this torch can load, in turn."""
    decoder = DECODERS[request.param]()
    assert decoder is not None, f"{request.param} cannot decode JPEGs here (not installed, or built for another torch)"
    return decoder
