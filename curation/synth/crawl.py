"""`lvd synth`: a crawl whose right answers are known, written with its truth table.

    OUT/pool/NNN/<key>.<ext>   the crawl: unique images, exact and near duplicates, eval leaks,
                               broken files and real-world format oddities
    OUT/seeds/<set>/*.jpg      seed sets: query images of some concepts (not in the pool)
    OUT/eval/<set>/*.jpg       evaluation sets (train/test), some leaked into the pool as near copies
    OUT/truth.parquet          one row per file above (see TRUTH_COLUMNS)
    OUT/urls.parquet           the pool's URLs under `base_url`, for img2dataset ingestion
    OUT/curation.yaml          a curation config for this crawl (paths relative to OUT)
    OUT/synth.json             the generation parameters

The same (images, seed, spec) always writes the same bytes. `spec` says what the crawl holds:
`DEMO` (the default: the demo's concepts, three seed sets, two small eval sets) or
`CURATION_VALUE` (the curation-value benchmark's harder crawl, see `CrawlSpec`).
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from PIL import Image

from curation.synth.concepts import PROCEDURAL, TEXTURES, ConceptExhausted, photo_concepts

TRUTH_COLUMNS = {
    "key": pa.string(),
    "role": pa.string(),
    "set": pa.string(),
    "split": pa.string(),
    "path": pa.string(),
    "url": pa.string(),
    "concept": pa.string(),
    "dup_group": pa.string(),
    "dup_kind": pa.string(),
    "leak_of": pa.string(),
    "broken_reason": pa.string(),
    "oddity": pa.string(),
    "http": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
}
BROKEN_KINDS = ("truncated", "not_an_image", "empty", "too_small")
ODDITIES = ("cmyk", "png16", "rgba_png", "exif_rotated", "grayscale", "palette_gif", "webp")
NEAR_COPY_KINDS = ("reencode", "resize", "crop", "colour")
SEED_SETS = {"seed_cat": ("cat", 8), "seed_stripes": ("stripes", 10), "seed_landscape": ("landscape", 12)}
EVAL_SETS = {"eval_a": ("bubbles", "coffee"), "eval_b": ("checkerboard", "clouds")}
EVAL_IMAGES_PER_CONCEPT = 10
SLOW_SECONDS = 8.0  # far past any sane client timeout, so "slow" never passes by luck under load


@dataclass(frozen=True)
class CrawlSpec:
    """What a crawl holds besides its size and seed: concepts and their shares, seed and eval sets.

    `DEMO` is the crawl every test and `lvd demo` use; `CURATION_VALUE` is the harder one the
    curation-value benchmark needs (see its docstring).
    """

    seed_sets: dict[str, tuple[str, int]]
    eval_sets: dict[str, tuple[str, ...]]
    eval_images_per_concept: int
    strategies: dict[str, dict[str, object]]
    shares: dict[str, float] | None = None  # of pool originals per concept; None: uniform over every concept
    textures: bool = False  # the nine procedural TEXTURES instead of the demo's concepts and photos
    copy_fraction: float = 0.12  # of pool files that are exact or near copies of another pool file
    sizes: tuple[int, int] = (192, 320)  # side lengths drawn per image, inclusive


DEMO = CrawlSpec(
    seed_sets=SEED_SETS,
    eval_sets=EVAL_SETS,
    eval_images_per_concept=EVAL_IMAGES_PER_CONCEPT,
    strategies={
        "seed_cat": {"kind": "as_is"},
        "seed_stripes": {"kind": "sample", "n": 4},
        "seed_landscape": {"kind": "cluster", "images_per_cluster": 20, "min_queries": 4, "max_images": 100},
    },
)
# The curation-value crawl: nine procedural concepts (curation.synth.concepts.TEXTURES); seed
# sets cover four, which make up a fifth of the pool, and off-target concepts the rest, as on the
# web. 8% of the pool are copies (App. A: self-dedup removes about that). Evaluation sets are
# large (60 images per concept, half train, half test) and leak into the pool as near copies.
COVERED = ("dots", "mosaic", "rings", "stripes")
UNCOVERED = ("bubbles", "checkerboard", "clouds", "landscape", "waves")
CURATION_VALUE = CrawlSpec(
    seed_sets={f"seed_{c}": (c, 12) for c in COVERED},
    eval_sets={"covered": COVERED, "uncovered": UNCOVERED},
    eval_images_per_concept=60,
    strategies={
        "seed_dots": {"kind": "sample", "n": 8},
        "seed_rings": {"kind": "sample", "n": 8},
        "seed_mosaic": {"kind": "cluster", "images_per_cluster": 40, "min_queries": 3, "max_images": 100},
        "seed_stripes": {"kind": "cluster", "images_per_cluster": 40, "min_queries": 3, "max_images": 100},
    },
    shares={**{c: 0.05 for c in COVERED}, **{c: 0.16 for c in UNCOVERED}},
    textures=True,
    copy_fraction=0.08,
    sizes=(80, 128),
)


@dataclass
class Crawl:
    """Truth rows being collected while files are written."""

    out: Path
    base_url: str
    rows: list[dict[str, object]] = field(default_factory=list)

    def add(self, rel: str, data: bytes, **truth: object) -> None:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        row = dict.fromkeys(TRUTH_COLUMNS)
        row.update(path=rel, **truth)
        if row["role"] == "pool":
            row["url"] = f"{self.base_url}/{rel}"
        self.rows.append(row)

    def add_image(self, rel: str, image: Image.Image, **truth: object) -> None:
        """Write `image` as a JPEG at `rel`, recording its size with the truth."""
        self.add(rel, jpeg(image), width=image.width, height=image.height, **truth)


class Renderer:
    """Renders concept images; a photo concept that runs out of distinct crops falls back to procedural."""

    def __init__(self, rng: np.random.Generator, spec: CrawlSpec = DEMO):
        self.rng = rng
        self.spec = spec
        self.concepts = dict(TEXTURES) if spec.textures else {**PROCEDURAL, **photo_concepts()}
        self.names = sorted(spec.shares or self.concepts)
        self.shares = (
            np.array([spec.shares[n] for n in self.names]) / sum(spec.shares.values()) if spec.shares else None
        )

    def render(self, concept: str) -> tuple[str, Image.Image]:
        low, high = self.spec.sizes
        size = (int(self.rng.integers(low, high + 1)), int(self.rng.integers(low, high + 1)))
        try:
            return concept, self.concepts[concept](self.rng, size)
        except ConceptExhausted:
            fallback = str(self.rng.choice(sorted(PROCEDURAL)))
            return fallback, PROCEDURAL[fallback](self.rng, size)

    def any_concept(self) -> tuple[str, Image.Image]:
        """A pool image: its concept drawn by the spec's shares."""
        return self.render(str(self.rng.choice(self.names, p=self.shares)))  # p=None: uniform, as the demo was


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def near_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> bytes:
    """A near duplicate as a crawler finds them: re-encoded, resized, slightly cropped or recoloured."""
    if kind == "reencode":
        return jpeg(image, quality=int(rng.integers(35, 61)))
    if kind == "resize":
        scale = rng.uniform(0.55, 0.8)
        return jpeg(image.resize((int(image.width * scale), int(image.height * scale)), Image.BILINEAR))
    if kind == "crop":
        dx, dy = (int(rng.uniform(0.02, 0.05) * s) for s in image.size)
        return jpeg(image.crop((dx, dy, image.width - dx, image.height - dy)))
    gains = rng.uniform(0.9, 1.1, 3)
    shifted = np.asarray(image, np.float32) * gains + rng.uniform(-10, 10)
    return jpeg(Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8)))


def odd_encoding(image: Image.Image, oddity: str) -> tuple[bytes, str]:
    """Bytes and extension of a *good* image in a format real crawls contain and ingest must normalise."""
    buffer = io.BytesIO()
    if oddity == "cmyk":
        image.convert("CMYK").save(buffer, format="JPEG", quality=90)
    elif oddity == "png16":
        gray16 = (np.asarray(image.convert("L"), np.uint16) * 257).astype(np.uint16)
        Image.fromarray(gray16).save(buffer, format="PNG")  # uint16 array -> mode I;16
    elif oddity == "rgba_png":
        alpha = np.linspace(255, 128, image.width, dtype=np.uint8)[None, :].repeat(image.height, 0)
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(buffer, format="PNG")
    elif oddity == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90° clockwise to display": stored pixels are turned the other way
        image.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=90, exif=exif)
    elif oddity == "grayscale":
        image.convert("L").save(buffer, format="JPEG", quality=90)
    elif oddity == "palette_gif":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="GIF")
    else:
        image.save(buffer, format="WEBP", quality=90)
    ext = {"png16": "png", "rgba_png": "png", "palette_gif": "gif", "webp": "webp"}.get(oddity, "jpg")
    return buffer.getvalue(), ext


def broken_file(kind: str, renderer: Renderer) -> bytes:
    """Bytes of a file that must be quarantined for `kind` (a decode reason of curation.decode)."""
    if kind == "truncated":
        data = jpeg(renderer.any_concept()[1])
        return data[: int(len(data) * renderer.rng.uniform(0.4, 0.7))]
    if kind == "not_an_image":
        return b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n"
    if kind == "empty":
        return b""
    if kind == "too_small":
        return jpeg(Image.new("RGB", (1, 1), (200, 10, 10)))
    buffer = io.BytesIO()  # decompression bomb: 400M pixels in a few tens of KB
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def make_crawl(
    out: str | Path,
    images: int = 2000,
    seed: int = 0,
    base_url: str = "http://127.0.0.1:8765",
    spec: CrawlSpec = DEMO,
) -> Path:
    """Write a synthetic crawl of `images` pool files (plus seed and eval sets) into `out`."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    renderer = Renderer(rng, spec)
    crawl = Crawl(out, base_url.rstrip("/"))

    eval_images = _write_eval_sets(crawl, renderer)
    _write_seed_sets(crawl, renderer)
    _write_pool(crawl, renderer, images, eval_images)

    truth = pa.Table.from_pylist(crawl.rows, pa.schema(TRUTH_COLUMNS))
    pq.write_table(truth, out / "truth.parquet")
    pool = truth.filter(pc.equal(truth["role"], "pool"))
    pq.write_table(pa.table({"url": pool["url"], "key": pool["key"]}), out / "urls.parquet")
    (out / "curation.yaml").write_text(yaml.safe_dump(_curation_config(seed, spec), sort_keys=False))
    (out / "synth.json").write_text(
        json.dumps({"images": images, "seed": seed, "base_url": crawl.base_url, "slow_seconds": SLOW_SECONDS}, indent=2)
    )
    return out


def _write_eval_sets(crawl: Crawl, renderer: Renderer) -> list[tuple[str, str, Image.Image]]:
    written = []
    per_concept = renderer.spec.eval_images_per_concept
    for name, concepts in renderer.spec.eval_sets.items():
        for concept in concepts:
            for i in range(per_concept):
                actual, image = renderer.render(concept)
                key = f"{name}_{concept}_{i:03d}"
                split = "train" if i < per_concept // 2 else "test"
                crawl.add_image(
                    f"eval/{name}/{key}.jpg", image, key=key, role="eval", set=name, split=split, concept=actual
                )
                written.append((key, actual, image))
    return written


def _write_seed_sets(crawl: Crawl, renderer: Renderer) -> None:
    for name, (concept, count) in renderer.spec.seed_sets.items():
        for i in range(count):
            actual, image = renderer.render(concept)
            key = f"{name}_{i:03d}"
            crawl.add_image(f"seeds/{name}/{key}.jpg", image, key=key, role="seed", set=name, concept=actual)


def _write_pool(crawl: Crawl, renderer: Renderer, images: int, eval_images: list) -> None:
    """Plan the pool's composition, shuffle it, then write each file under a key from its position."""
    rng = renderer.rng
    n_broken = max(len(BROKEN_KINDS) + 1, round(0.015 * images))
    n_leaks = min(len(eval_images), max(4, round(0.01 * images)))
    n_copies = round(renderer.spec.copy_fraction * images)
    n_unique = images - n_broken - n_leaks - n_copies
    if n_unique < 20:
        raise ValueError(f"--images {images} is too small for a crawl with every kind of case; use at least 100")

    entries: list[dict[str, object]] = []
    originals = [renderer.any_concept() for _ in range(n_unique)]
    group_sizes = _split_copies(n_copies, rng)
    n_odd = max(len(ODDITIES), round(0.02 * images))
    plain = list(range(len(group_sizes) + n_odd, n_unique))  # neither dup group originals nor oddities
    http = _http_behaviours(plain, images, rng)
    for index, (concept, image) in enumerate(originals):
        group = f"g{index:05d}" if index < len(group_sizes) else None
        oddity = (
            ODDITIES[(index - len(group_sizes)) % len(ODDITIES)]
            if group is None and index < len(group_sizes) + n_odd
            else None
        )
        data, ext = odd_encoding(image, oddity) if oddity else (jpeg(image), "jpg")
        entries.append(
            dict(
                data=data,
                ext=ext,
                concept=concept,
                dup_group=group,
                dup_kind="original" if group else None,
                oddity=oddity,
                http=http.get(index, "ok"),
                width=image.width,
                height=image.height,
            )
        )
        for _ in range(group_sizes[index] if group else 0):
            kind = str(rng.choice(("exact", *NEAR_COPY_KINDS)))
            copy = data if kind == "exact" else near_copy(image, kind, rng)
            w, h = Image.open(io.BytesIO(copy)).size
            entries.append(
                dict(
                    data=copy, ext="jpg", concept=concept, dup_group=group, dup_kind=kind, http="ok", width=w, height=h
                )
            )
    for key, concept, image in (eval_images[i] for i in rng.choice(len(eval_images), n_leaks, replace=False)):
        copy = near_copy(image, str(rng.choice(NEAR_COPY_KINDS)), rng)
        w, h = Image.open(io.BytesIO(copy)).size
        entries.append(dict(data=copy, ext="jpg", concept=concept, leak_of=key, http="ok", width=w, height=h))
    for kind in ("decompression_bomb", *[k for k, _ in zip(cycle(BROKEN_KINDS), range(n_broken - 1), strict=False)]):
        entries.append(dict(data=broken_file(kind, renderer), ext="jpg", broken_reason=kind, http="ok"))

    for position, i in enumerate(rng.permutation(len(entries))):
        entry = entries[i]
        key = f"p{position:06d}"
        data, ext = entry.pop("data"), entry.pop("ext")
        crawl.add(f"pool/{position // 500:03d}/{key}.{ext}", data, key=key, role="pool", **entry)


def _split_copies(n_copies: int, rng: np.random.Generator) -> list[int]:
    """Sizes (copies per original, 1-3) of duplicate groups adding up to `n_copies`."""
    sizes = []
    while n_copies > 0:
        sizes.append(min(n_copies, int(rng.integers(1, 4))))
        n_copies -= sizes[-1]
    return sizes


def _http_behaviours(candidates: list[int], images: int, rng: np.random.Generator) -> dict[int, str]:
    """How the loopback server answers some plain originals' URLs: 404, 500, too slow, or a redirect."""
    wanted = {
        "404": max(2, round(0.015 * images)),
        "500": max(1, round(0.01 * images)),
        "slow": max(1, round(0.0025 * images)),
        "redirect": max(2, round(0.02 * images)),
    }
    chosen = rng.choice(candidates, sum(wanted.values()), replace=False)
    labels = [label for label, n in wanted.items() for _ in range(n)]
    return {int(i): label for i, label in zip(chosen, labels, strict=True)}


def _curation_config(seed: int, spec: CrawlSpec = DEMO) -> dict[str, object]:
    """A config that curates this crawl; paths are relative to the crawl folder."""
    return {
        "run": {"name": "synth", "seed": seed},
        "ingest": {"sources": [{"kind": "folder", "path": "pool"}], "shard_size": 250},
        # The tiny embedder scores every planted copy >= 0.92 and no two distinct images that high
        # (the paper's 0.6 / 0.45 are for SSCD features).
        "embed": {"models": {"copy": {"name": "tiny"}, "retrieval": {"name": "tiny:semantic"}}},
        "dedup": {"role": "copy", "k": 16, "threshold": 0.92},
        "decontam": {"eval_sets": [{"name": n, "path": f"eval/{n}"} for n in spec.eval_sets], "threshold": 0.92},
        "retrieve": {
            "clusters": 16,
            "sources": [
                {
                    "name": name,
                    "dataset": f"synthetic {concept}",
                    "path": f"seeds/{name}",
                    "images": count,
                    "strategy": spec.strategies[name],
                }
                for name, (concept, count) in spec.seed_sets.items()
            ],
        },
    }


EMPTY_PHOTO = "photos/0000/img_00000000.jpg"  # every path `empty_photos` writes is as long as this one


def empty_photos(folder: Path, n: int) -> Path:
    """`folder/photos/`, holding `n` empty files, 1,000 a folder: what listing a crawl costs depends
    on its paths, not on their bytes, so the listing's benchmarks list these."""
    for start in range(0, n, 1000):
        below = folder / "photos" / f"{start // 1000:04d}"
        below.mkdir(parents=True)
        for i in range(start, min(n, start + 1000)):
            (below / f"img_{i:08d}.jpg").touch()
    return folder / "photos"
