"""Retrieval from the curated pool: the per-seed-set source rows of the paper's Table 15.

At this stage of the project this module holds the configuration contract that
`configs/curation/lvd142m.yaml` and the synthetic crawl's config are written in; the retrieval
itself (Faiss search and k-means over the pool) builds on the embed and dedup stages.

Strategies (DINOv2 paper, Sec. 3 and App. A.2):
- `as_is`: the seed set itself enters the curated set;
- `sample`: the `n` nearest pool images of every query image;
- `cluster`: the pool is k-means clustered; every cluster holding at least `min_queries` query
  images (paper: "more than 3") contributes `images_per_cluster` images, at most `max_images` per set.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from curation.config import ConfigPath, Section


class AsIs(Section):
    kind: Literal["as_is"] = "as_is"


class Sample(Section):
    kind: Literal["sample"] = "sample"
    n: int = Field(ge=1, description="nearest pool images taken per query image")


class Cluster(Section):
    kind: Literal["cluster"] = "cluster"
    images_per_cluster: int = Field(ge=1)
    min_queries: int = Field(4, ge=1, description="query images a cluster must hold to contribute")
    max_images: int | None = Field(None, ge=1, description="cap on the images this set contributes")


Strategy = Annotated[AsIs | Sample | Cluster, Field(discriminator="kind")]


class SeedSet(Section):
    """One source row: a curated seed dataset and how pool images are retrieved for it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="row id; also the retrieve/<name>/ folder")
    dataset: str = Field("", description="display name, e.g. 'ImageNet-22k'")
    split: str = ""
    task: str = ""
    path: ConfigPath | None = Field(None, description="the seed images: a folder or tar shards")
    images: int | None = Field(None, ge=0, description="size of the seed set (for planning)")
    strategy: Strategy
    expected: int | None = Field(None, ge=0, description="images this row should yield (paper's count)")


class RetrieveConfig(Section):
    """All source rows plus the pool clustering shared by the `cluster` rows."""

    sources: list[SeedSet] = Field(default_factory=list)
    clusters: int = Field(100_000, ge=1, description="k-means clusters of the pool (paper: 100,000)")

    @model_validator(mode="after")
    def _unique_names(self) -> RetrieveConfig:
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"source row names must be unique; repeated: {repeated}")
        return self

    def expected_total(self) -> int:
        return sum(s.expected or 0 for s in self.sources)
