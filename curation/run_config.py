"""The whole config tree of one curation run: `run`, then one section per stage.

Each stage's section is defined in the stage's own module; this file only assembles them and
knows which stage reads which (for the per-stage hashes in the run directory).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from curation.assemble import AssembleConfig
from curation.decontam import DecontamConfig
from curation.dedup import DedupConfig
from curation.embed import EmbedConfig
from curation.ingest import IngestConfig
from curation.retrieve import RetrieveConfig
from foundation.config import Section, load_config
from foundation.storage import LocalPath, posix_path


class RunSection(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    dir: LocalPath | None = Field(None, description="run directory; default runs/<name> under the working directory")
    seed: int = 0


class CurationConfig(Section):
    run: RunSection = RunSection()
    ingest: IngestConfig
    embed: EmbedConfig = EmbedConfig()
    dedup: DedupConfig = DedupConfig()
    decontam: DecontamConfig = DecontamConfig()
    retrieve: RetrieveConfig = RetrieveConfig()
    assemble: AssembleConfig = AssembleConfig()

    @model_validator(mode="after")
    def _roles_exist(self) -> CurationConfig:
        roles = set(self.embed.models)
        for section in ("dedup", "decontam", "retrieve"):
            role = getattr(self, section).role
            if role not in roles:
                raise ValueError(f"{section}.role {role!r} is not one of the embed.models roles {sorted(roles)}")
        return self

    def reference_sets(self) -> dict[str, Path]:
        """Images that enter the run beside the pool: `seeds/<row>` and `eval/<set>` -> path.

        Rows sharing a path (ImageNet-22k as_is and sample) share one set, named after the first.
        """
        sets: dict[str, Path] = {}
        for row in self.retrieve.sources:
            if row.path is not None and row.path not in sets.values():
                sets[f"seeds/{row.name}"] = row.path
        for eval_set in self.decontam.eval_sets:
            sets[f"eval/{eval_set.name}"] = eval_set.path
        return sets

    def seed_collection(self, row_name: str) -> str:
        """The reference set holding a source row's seed images."""
        row = next(r for r in self.retrieve.sources if r.name == row_name)
        return next(name for name, path in self.reference_sets().items() if path == row.path)

    def run_dir(self, override: str | Path | None = None) -> Path:
        if override is not None:
            return posix_path(override)
        return self.run.dir or Path("runs") / self.run.name


def load_curation_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CurationConfig:
    return load_config(CurationConfig, path, overrides)
