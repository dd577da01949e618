"""The `lvd` command as a user runs it: demo end to end, status, and failures told in one line."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys

import yaml
from PIL import Image


def lvd(*args: str, cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "LVD_DEBUG": "", **(env or {})},
    )


def test_demo_runs_end_to_end_and_status_shows_the_counts(tmp_path):
    # The training half (minutes on CPU) is checked by the slow tests/test_train_learns.py.
    result = lvd("demo", "--workdir", str(tmp_path / "demo"), "--images", "150", "--no-train")
    assert result.returncode == 0, result.stderr
    assert "ingest: 150 inputs ->" in result.stdout
    status = lvd("status", str(tmp_path / "demo" / "run"))
    assert status.returncode == 0 and "ingest" in status.stdout and "done" in status.stdout


def test_misspelt_key_exits_2_with_a_one_line_reason(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"ingest": {"sources": [{"kind": "folder", "path": "."}], "shard_sise": 3}}))
    result = lvd("ingest", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ingest.shard_sise" in result.stderr and "shard_size" in result.stderr
    assert not (tmp_path / "run").exists()


def test_status_of_a_non_run_directory_is_an_error(tmp_path):
    result = lvd("status", str(tmp_path))
    assert result.returncode == 2 and "manifest" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_synth_writes_a_crawl_with_its_config(tmp_path):
    result = lvd("synth", str(tmp_path / "c"), "--images", "100", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert {"truth.parquet", "urls.parquet", "curation.yaml", "synth.json"} <= {
        p.name for p in (tmp_path / "c").iterdir()
    }


def bmp_with_a_corrupt_compression_field() -> bytes:
    """A BMP whose biCompression field (bytes 30-33) holds a value Pillow raises OSError on."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="BMP")
    data = bytearray(buffer.getvalue())
    data[30:34] = (2293760).to_bytes(4, "little")
    return bytes(data)


def test_a_malformed_file_among_good_ones_is_quarantined_not_a_crash(crawl, pool_truth, tmp_path):
    """The report behind this test: 50 good JPEGs plus a BMP named weird.jpg stopped ingest for good."""
    folder = tmp_path / "crawl"
    folder.mkdir()
    good = [r for r in pool_truth if not r["broken_reason"] and r["path"].endswith(".jpg")][:50]
    for row in good:
        shutil.copy(crawl / row["path"], folder / f"{row['key']}.jpg")
    (folder / "weird.jpg").write_bytes(bmp_with_a_corrupt_compression_field())
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"ingest": {"sources": [{"kind": "folder", "path": "crawl"}], "shard_size": 16}}))
    for _ in range(2):  # the second run finds the stage done
        result = lvd("ingest", str(config), "--run-dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        assert "51 inputs -> 50 ingested + 1 quarantined (corrupt 1)" in result.stdout


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{not json\n")  # a training run whose metrics are garbled
    result = lvd("report", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: JSONDecodeError:") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" in lvd("--debug", "report", str(tmp_path)).stderr
    assert "Traceback" in lvd("report", str(tmp_path), env={"LVD_DEBUG": "1"}).stderr


RAY_DATA_MAPS_FAILING = """
import sys
import ray
from foundation.errors import CorruptInput
from foundation.ray_session import connect_ray
from pipelines.entry import one_line

def damaged(row):
    raise CorruptInput("embed: image 0a1b in 000001.tar no longer decodes")

def buggy(row):
    raise ValueError("bad\\nvalue")

connect_ray()
for name, map_fn in (("ours", damaged), ("theirs", buggy)):
    print(f"--- {name}", file=sys.stderr, flush=True)
    try:
        ray.data.range(2, override_num_blocks=1).map(map_fn).materialize()
    except Exception as error:
        print(isinstance(error, CorruptInput), one_line(error), flush=True)
"""


def test_an_error_of_ours_in_a_ray_data_map_is_told_in_one_line_and_only_there():
    """A map function raising CorruptInput on a real embedded Ray: the driver gets that error (not
    Ray Data's UserCodeException), its one line drops the retry advice Ray appends to it, and Ray
    Data's console logs none of the tracebacks it writes for what it takes for its own bug. Any
    other error keeps Ray's report. Ray runs in a child process, as tests/conftest.py asks."""
    done = subprocess.run([sys.executable, "-c", RAY_DATA_MAPS_FAILING], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ours, theirs = done.stdout.splitlines()
    assert ours == "True error: embed: image 0a1b in 000001.tar no longer decodes"
    assert theirs.startswith("False error: ValueError: bad ("), theirs
    console_ours, console_theirs = done.stderr.split("--- ours\n")[1].split("--- theirs\n")
    assert "Starting execution" in console_ours, done.stderr  # the console is live
    assert "Traceback" not in console_ours and "open an issue" not in console_ours, console_ours
    assert "Traceback" in console_theirs, console_theirs


RAY_TASKS_FAILING = """
import sys
from foundation.errors import CorruptInput
from foundation.executors import ray_map
from pipelines.entry import exit_code_of

def damaged(i):
    raise CorruptInput(f"shard {i} is damaged")

sys.exit(exit_code_of(lambda: list(ray_map()(damaged, range(4)))))
"""


def test_the_first_of_many_failing_ray_tasks_is_the_one_thing_told():
    """The map stops at the first task's error. The other tasks fail too, at once, some before the
    map's cancel reaches them: unless the map reads those outcomes, Ray prints each as an
    "unhandled error" when the driver exits (it did, in one CI run out of many, when the tasks
    were spaced 0.3 s apart)."""
    done = subprocess.run(
        [sys.executable, "-c", RAY_TASKS_FAILING], capture_output=True, text=True, env={**os.environ, "LVD_DEBUG": ""}
    )
    assert done.returncode == 2, done.stderr
    told = [line for line in done.stderr.splitlines() if re.fullmatch(r"error: shard \d is damaged", line)]
    assert len(told) == 1, done.stderr
    assert "Unhandled error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_lvd_curate_takes_the_options_of_python_m_pipelines_curate(tmp_path):
    module_help = subprocess.run(
        [sys.executable, "-m", "pipelines.curate", "--help"], capture_output=True, text=True
    ).stdout
    lvd_help = lvd("curate", "--help").stdout
    for option in ("--run-dir", "--from", "--to", "--only", "--executor", "--plan", "--pool-size", "--gpus"):
        assert option in module_help and option in lvd_help, option
    assert lvd("synth", str(tmp_path / "c"), "--images", "120").returncode == 0
    result = lvd("curate", str(tmp_path / "c" / "curation.yaml"), "--to", "dedup", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert sorted(manifest["stages"]) == ["dedup", "embed", "ingest"]
