"""Reading a finished stage's output back, for byte-for-byte comparisons between runs."""

from __future__ import annotations

from pathlib import Path


def stage_files(run_dir: Path, stage: str = "ingest") -> dict[str, bytes]:
    """Every file of a finished stage (relative path -> bytes)."""
    root = run_dir / stage
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
