"""Reading a finished stage's output back (for byte-for-byte comparisons between runs), and damaging it."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path


def stage_files(run_dir: Path, stage: str = "ingest") -> dict[str, bytes]:
    """Every file of a finished stage (relative path -> bytes)."""
    root = run_dir / stage
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_dir_with(source: Path, target: Path, stages: tuple[str, ...]) -> Path:
    """A new run directory whose finished `stages` are links to `source`'s (so later stages run alone)."""
    target.mkdir(parents=True)
    for stage in stages:
        (target / stage).symlink_to(source / stage)
    (target / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    return target


def curate_command(config: Path, run_dir: Path, *overrides: str, executor: str = "local") -> list[str]:
    """The `python -m pipelines.curate` command line a user would type, for tests that run (or kill) it."""
    return [
        sys.executable,
        "-m",
        "pipelines.curate",
        str(config),
        *overrides,
        "--run-dir",
        str(run_dir),
        "--executor",
        executor,
    ]


def with_an_image_zeroed(shard: Path, out: Path) -> str:
    """`shard` copied to `out` with its third image's bytes overwritten by zeros in place, as storage
    can damage a file (the tar itself stays readable); the damaged image's key."""
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        member = [m for m in tar if m.name.endswith(".jpg")][2]
    data[member.offset_data : member.offset_data + member.size] = bytes(member.size)
    out.write_bytes(bytes(data))
    return member.name.split(".")[0]
