"""The training input: curated WebDataset shards → multi-crop batches with iBOT masks.

Shards are resampled (drawn with replacement, as DINOv2's infinite sampler does), so every rank
and every loader worker reads an endless, independent stream; the shard order is seeded by
(run seed, rank, worker, start step), so a resumed run continues with a fresh but reproducible
stream instead of replaying the images it has already seen. Decoding and cropping happen in the
loader's worker processes, colour augmentation on the training device (`CropBatch.coloured`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from foundation.errors import ConfigError
from foundation.storage import Location, location, open_input
from training.augment import MultiCrop, MultiCropViews, View
from training.colour import DRAW_COLUMNS, Colour, colour_batch
from training.config import TrainConfig
from training.masking import BlockMaskGenerator, batch_masks, masked_rows

IMAGE_EXTENSIONS = "jpg;jpeg;png;webp"


def shard_urls(source: str | Location) -> list[str]:
    """Shards from a folder (its `*.tar`, sorted) or a brace pattern such as `data/{000000..000099}.tar`,
    local or on any fsspec file system (s3://bucket/shards/{000000..000099}.tar)."""
    root = location(source)
    if root.is_dir():
        urls = [str(p) for p in sorted(root.glob("*.tar"))]
    else:
        urls = wds.shardlists.expand_urls(str(root))
        if isinstance(root, Path):  # a remote pattern is not listed shard by shard (one request each)
            urls = [url for url in urls if Path(url).is_file()]
    if not urls:
        raise ConfigError(f"data.shards: no .tar shards found at {source}")
    return urls


def tar_samples(shards: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """{'url'} dicts -> WebDataset samples, each shard opened with fsspec: webdataset's own opener
    knows only a few URL schemes, fsspec knows every object store its plugins add.

    Each shard's file is closed here once it is read, or when the stream is dropped mid-shard (the
    end of training): webdataset's tar reader never closes the files it is given."""

    def opened() -> Iterator[dict]:
        for shard in shards:
            try:
                stream = open_input(shard["url"])
            except Exception as exc:
                if not handler(exc):
                    raise
                continue
            with stream:
                yield {**shard, "stream": stream}

    files = wds.tariterators.tar_file_expander(opened(), handler=handler)
    return wds.tariterators.group_by_keys(files, handler=handler)


def _stream_seed(seed: int, rank: int, start_step: int) -> int:
    worker = get_worker_info()
    return hash((seed, rank, worker.id if worker else 0, start_step)) & 0x7FFFFFFF


def _crop_first(transform: MultiCrop, sample: tuple) -> MultiCropViews:
    return transform(sample[0])


def image_stream(
    urls: list[str], transform: MultiCrop, seed: int, rank: int, start_step: int, shuffle_buffer: int
) -> wds.DataPipeline:
    """Endless stream of `MultiCropViews`; an undecodable sample is logged and skipped."""
    worker_seed = partial(_stream_seed, seed, rank, start_step)
    return wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, worker_seed=worker_seed, deterministic=True),
        partial(tar_samples, handler=wds.warn_and_continue),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed + rank + start_step),
        wds.decode("pil", handler=wds.warn_and_continue),
        wds.to_tuple(IMAGE_EXTENSIONS, handler=wds.warn_and_continue),
        wds.map(partial(_crop_first, transform)),
    )


@dataclass
class CropBatch:
    """Global crops are crop-major (all images' first crop, then all images' second crop); likewise local.

    As the loader yields it, crops are uint8 pixels with their colour draws; `coloured()`, on the
    training device, turns them into the model's normalised float input.
    """

    global_crops: torch.Tensor  # (2·B)×3×G×G
    local_crops: torch.Tensor  # (L·B)×3×l×l, L may be 0
    masks: torch.Tensor  # (2·B)×N boolean, N = (G / patch)²
    mask_rows: torch.Tensor  # M flat indices of the masked patches into (2·B)·N, in masks[masks] order
    mask_weights: torch.Tensor  # M iBOT weights: 1 / masked patches of the patch's crop
    batch_size: int
    global_colour: torch.Tensor | None = None  # (2·B)×DRAW_COLUMNS `draw_colour` rows; None once coloured
    local_colour: torch.Tensor | None = None  # (L·B)×DRAW_COLUMNS

    def pin_memory(self) -> CropBatch:
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device) -> CropBatch:
        return self._map(partial(torch.Tensor.to, device=device, non_blocking=True))

    def coloured(self, colour: Colour = colour_batch) -> CropBatch:
        """The crops colour-augmented and normalised where they are (uint8 -> float), by
        `colour_batch` or its compiled form."""
        if self.global_colour is None or self.local_colour is None:
            return self
        local = colour(self.local_crops, self.local_colour) if len(self.local_crops) else self.local_crops.float()
        return replace(
            self,
            global_crops=colour(self.global_crops, self.global_colour),
            local_crops=local,
            global_colour=None,
            local_colour=None,
        )

    def _map(self, move: Callable[[torch.Tensor], torch.Tensor]) -> CropBatch:
        tensors = (self.global_crops, self.local_crops, self.masks, self.mask_rows, self.mask_weights)
        draws = (move(d) if d is not None else None for d in (self.global_colour, self.local_colour))
        return CropBatch(*map(move, tensors), self.batch_size, *draws)


class CollateCrops:
    """Stacks multi-crop views and their colour draws, and draws the iBOT masks for the global crops."""

    def __init__(self, grid: tuple[int, int], probability: float, ratio: tuple[float, float]):
        self.generator = BlockMaskGenerator(grid)
        self.probability, self.ratio = probability, ratio

    def __call__(self, samples: list[MultiCropViews]) -> CropBatch:
        rng = random.Random(int(torch.randint(2**62, ())))  # torch's RNG is seeded per loader worker
        n_global, n_local = len(samples[0].global_crops), len(samples[0].local_crops)
        global_crops = [s.global_crops[i] for i in range(n_global) for s in samples]
        local_crops = [s.local_crops[i] for i in range(n_local) for s in samples]
        global_pixels, global_colour = _stacked(global_crops)
        local_pixels, local_colour = _stacked(local_crops)
        masks = batch_masks(self.generator, len(global_crops), self.probability, self.ratio, rng)
        return CropBatch(
            global_pixels, local_pixels, masks, *masked_rows(masks), len(samples), global_colour, local_colour
        )


def _stacked(views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
    if not views:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, DRAW_COLUMNS)
    return torch.stack([v.pixels for v in views]), torch.stack([v.colour for v in views])


def make_loader(
    source: str | Path,
    transform: MultiCrop,
    collate: CollateCrops,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int,
    start_step: int,
    shuffle_buffer: int = 1000,
    pin_memory: bool = False,
) -> Iterator[CropBatch]:
    stream = image_stream(shard_urls(source), transform, seed, rank, start_step, shuffle_buffer)
    generator = torch.Generator().manual_seed(hash((seed, rank, start_step)) & 0x7FFFFFFF)
    loader = DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=generator,
    )
    return iter(loader)


def multi_crop_for(config: TrainConfig) -> MultiCrop:
    """The multi-crop augmentation a training config describes."""
    c = config.crops
    return MultiCrop(c.global_size, c.local_size, c.local_number, c.global_scale, c.local_scale)


def loader_for(
    config: TrainConfig,
    rank: int,
    start_step: int,
    seed: int | None = None,
    workers: int | None = None,
    pin_memory: bool = False,
) -> Iterator[CropBatch]:
    """The loader a training config describes (crops, masks, batch size, workers, seed)."""
    grid = (config.crops.global_size // config.model.patch_size,) * 2
    return make_loader(
        config.data.shards,
        multi_crop_for(config),
        CollateCrops(grid, config.loss.mask_probability, config.loss.mask_ratio),
        config.data.batch_size_per_gpu,
        config.data.workers if workers is None else workers,
        config.run.seed if seed is None else seed,
        rank,
        start_step,
        config.data.shuffle_buffer,
        pin_memory=pin_memory,
    )
