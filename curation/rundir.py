"""The run-directory contract: one directory per curation run, one sub-folder per stage.

    RUN/manifest.json        config, config hash, per-stage status/hash/counts, package versions
    RUN/<stage>/             a finished stage's output (only ever appears by an atomic rename)
    RUN/<stage>.<hash>.partial/  work in progress; survives a kill so a re-run resumes from it

A stage is identified by a hash of its own config section and of the hashes of the stages it
reads from (see `stage_hash`), so editing the retrieval config does not redo ingest, and a stage
whose finished output carries the same hash is skipped. Restart is the recovery path: a killed
run re-run with the same command finishes the partial work and produces the same bytes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from foundation.config import config_hash
from foundation.errors import StageError
from foundation.files import write_text

MANIFEST = "manifest.json"
VERSIONED_PACKAGES = ("lvd-curation", "torch", "ray", "faiss-cpu", "pyarrow", "pillow", "webdataset", "img2dataset")


def stage_hash(stage: str, section: Any, upstream: Mapping[str, str] = ()) -> str:
    """Hash of a stage's config section plus the hashes of the stages whose output it reads."""
    return config_hash({"stage": stage, "config": section, "upstream": dict(upstream)})


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour shapes the output bytes."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class StageWork:
    """A stage in progress: write into `path`; `counts` go to the manifest when the stage commits."""

    name: str
    hash: str
    path: Path
    counts: dict[str, int] = field(default_factory=dict)


class RunDir:
    """A curation run directory and its manifest.

    The manifest is rewritten atomically (temp file + `os.replace`) on every change, so a kill
    never leaves it half-written.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text())

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def record_config(self, config: Any) -> None:
        """Store the run's full config, its hash and the package versions in the manifest."""
        manifest = self.read_manifest()
        dumped = config.model_dump(mode="json")
        manifest.update(config=dumped, config_hash=config_hash(dumped), versions=package_versions())
        self._write_manifest(manifest)

    def stage_path(self, stage: str) -> Path:
        return self.root / stage

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        return self.read_manifest()["stages"].get(stage)

    def is_done(self, stage: str, hash_: str) -> bool:
        """True when `stage` finished with exactly this hash and its output folder is present."""
        record = self.stage_record(stage)
        return bool(
            record
            and record.get("status") == "done"
            and record.get("hash") == hash_
            and self.stage_path(stage).is_dir()
        )

    def require_done(self, stage: str) -> dict[str, Any]:
        """The manifest record of a finished upstream stage, or a StageError saying what to run."""
        record = self.stage_record(stage)
        if not record or record.get("status") != "done" or not self.stage_path(stage).is_dir():
            raise StageError(f"run {self.root}: stage {stage!r} has not finished; run it first")
        return record

    @contextmanager
    def stage(self, name: str, hash_: str) -> Iterator[StageWork]:
        """Run one stage's work inside `RUN/<name>.<hash>.partial`, then rename it to `RUN/<name>`.

        A partial folder with the same hash is kept (the stage resumes from what it holds); partial
        folders of other hashes and a finished output of another hash are removed first. If the
        body raises, the partial folder stays for the next attempt and the manifest says `failed`.
        """
        partial = self.root / f"{name}.{hash_[:16]}.partial"
        for stale in self.root.glob(f"{name}.*.partial"):
            if stale != partial:
                shutil.rmtree(stale)
        final = self.stage_path(name)
        if final.exists():
            shutil.rmtree(final)
        partial.mkdir(parents=True, exist_ok=True)
        self._set_stage(name, {"status": "running", "hash": hash_, "started": time.time()})
        work = StageWork(name=name, hash=hash_, path=partial)
        started = time.monotonic()
        try:
            yield work
        except BaseException:
            self._set_stage(name, {"status": "failed", "hash": hash_})
            raise
        os.replace(partial, final)
        self._set_stage(
            name,
            {"status": "done", "hash": hash_, "counts": work.counts, "seconds": round(time.monotonic() - started, 3)},
        )

    def _set_stage(self, name: str, record: dict[str, Any]) -> None:
        manifest = self.read_manifest()
        manifest["stages"][name] = record
        self._write_manifest(manifest)


def require_new_stage_dir(path: Path) -> None:
    """Refuse to treat a non-run directory as a run directory (guards against a mistyped --run-dir)."""
    if path.exists() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise StageError(
            f"{path} exists, is not empty and has no {MANIFEST}: not a run directory; pick another --run-dir"
        )
