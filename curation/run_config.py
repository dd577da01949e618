"""The whole config tree of one curation run: `run`, then one section per stage.

Each stage's section is defined in the stage's own module; this file only assembles them and
knows which stage reads which (for the per-stage hashes in the run directory).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from curation.config import ConfigPath, Section, load_config
from curation.decontam import DecontamConfig
from curation.ingest import IngestConfig
from curation.retrieve import RetrieveConfig


class RunSection(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    dir: ConfigPath | None = Field(None, description="run directory; default runs/<name> under the working directory")
    seed: int = 0


class CurationConfig(Section):
    run: RunSection = RunSection()
    ingest: IngestConfig
    decontam: DecontamConfig = DecontamConfig()
    retrieve: RetrieveConfig = RetrieveConfig()

    def run_dir(self, override: str | Path | None = None) -> Path:
        if override is not None:
            return Path(override)
        return self.run.dir or Path("runs") / self.run.name


def load_curation_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CurationConfig:
    return load_config(CurationConfig, path, overrides)
