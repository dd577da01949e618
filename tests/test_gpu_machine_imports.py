"""`benchmarks/gpu_check.sh` runs on a GPU machine whose Python has torch, torchvision, timm and a
few wheels, but not Ray, img2dataset or pandas (see the script's header). Here the benchmarks it
calls run in a fresh interpreter where importing those fails, so code that only works because
one of them loaded something first fails here, not in a GPU session. (It happened: pyarrow's
pandas shim imported `pyarrow.compute`, which the synthetic crawl used without importing.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "img2dataset", "pandas")

# Importing an absent package raises ModuleNotFoundError and `importlib.util.find_spec` answers
# None for it (torch probes for pandas that way), as on a machine without it.
REFUSE = f"""
import importlib.util, sys
absent = {ABSENT!r}
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Absent())
probe = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in absent else probe(name, package)
"""


def run_without_them(script: str, *args: str, timeout: int = 300) -> str:
    runner = REFUSE + f"import runpy; sys.argv = {[script, *args]!r}; runpy.run_path({script!r}, run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", runner], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_refusal_works():
    refused = subprocess.run([sys.executable, "-c", REFUSE + "import ray"], capture_output=True, text=True)
    assert refused.returncode != 0 and "ModuleNotFoundError" in refused.stderr


def test_embed_benchmark_runs_without_them():
    out = run_without_them(
        "benchmarks/embed.py",
        "--model",
        "tiny",
        "--executor",
        "local",
        "--decode",
        "device",
        "--images",
        "64",
        "--batch-size",
        "16",
        "--repeat",
        "3",
    )
    assert "ratio stage/bare" in out and "CPU cores busy" in out


def test_the_gpu_checks_test_selections_run_without_them():
    """The pytest runs `gpu_check.sh` makes (its colour-tests and decode-tests checks): here their
    tests skip for want of CUDA, but collecting and configuring them must not need Ray. (It did:
    conftest imported Ray, and both checks would have died before running a test on the GPU.)"""
    for path, selection in (("tests/test_train_augment.py", "cuda"), ("tests/test_device_decode.py", "overwrites")):
        code = (
            REFUSE
            + f"import pytest; sys.exit(pytest.main(['-p', 'no:cacheprovider', '-q', {path!r}, '-k', {selection!r}]))"
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 0 and " skipped" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


def test_training_entry_points_import_without_them():
    out = run_without_them("benchmarks/train.py", "--help")
    assert "--levers" in out
    code = REFUSE + "import pipelines.pretrain, pipelines.distill, models.backbones; print('imported')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-3000:]
