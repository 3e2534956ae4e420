"""Building a prototype bank from image tiles and captions, as the original UniPath curated its bank.

Pass 1 (batched, sharded, resumable, bounded memory): decode each tile, quality control (tissue fraction, blur),
perceptual hash, thumbnail, retrieval image features and prototype features; one safetensors shard per
`shard_size` tiles in a work folder (a rerun skips finished shards). Pass 2: near-duplicate removal (perceptual
hash), K-means sampling to `size` entries, a keyword vocabulary by n-gram counting filtered with stop words and the
pathology lexicon (plus an optional LLM filter hook), each entry's keywords (the inverted index), and the text
features of the descriptions. The bank is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .bank_curation import build_vocabulary, check_quality, deduplicate_hashes, kmeans_sample, perceptual_hash
from .data import DataError, decode_image, read_metadata_file
from .io_utils import atomic_save_safetensors, atomic_write_json
from .prototype_bank import PrototypeBank, PrototypeEntry, keyword_pattern

logger = logging.getLogger(__name__)


@dataclass
class BankBuildConfig:
    """Settings of `build_bank` (defaults follow the original's curation where it is known)."""

    size: Optional[int] = None  # entries to keep by K-means sampling; None keeps all that pass QC and de-duplication
    min_tissue: float = 0.5
    min_blur: float = 20.0
    dedup_distance: int = 4  # perceptual-hash bits; -1 disables de-duplication
    shard_size: int = 1024
    batch_size: int = 32
    thumbnail_size: int = 64
    min_keyword_count: int = 2
    max_vocabulary: Optional[int] = None
    seed: int = 0


def _thumbnail(image, size: int) -> np.ndarray:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size)), dtype=np.uint8)


def _hash_tensor(hashes: List[int]) -> torch.Tensor:
    return torch.tensor([h - (1 << 64) if h >= (1 << 63) else h for h in hashes], dtype=torch.int64)


def _extract_shard(rows, images_dir: str, encoder, extractor, config: BankBuildConfig) -> tuple[Dict[str, torch.Tensor], List[dict]]:
    records, kept_images = [], []
    for row in rows:
        image = decode_image(os.path.join(images_dir, row["file_name"]), row["file_name"])
        record = {"file_name": row["file_name"], "caption": str(row["text"])}
        if image is None:
            record.update(passed=False, reason="unreadable image")
        else:
            report = check_quality(image, config.min_tissue, config.min_blur)
            record.update(passed=report.passed, reason=report.reason, tissue=round(report.tissue_fraction, 4), blur=round(report.blur, 2))
            if report.passed:
                kept_images.append(image)
        records.append(record)
    tensors: Dict[str, torch.Tensor] = {}
    if kept_images:
        tensors["image_features"] = encoder.encode_image(kept_images)
        if extractor is not encoder:  # else the prototype features are the image features (stored once)
            tensors["prototype_features"] = extractor.encode_image(kept_images)
        tensors["thumbnails"] = torch.from_numpy(np.stack([_thumbnail(im, config.thumbnail_size) for im in kept_images]))
        tensors["phash"] = _hash_tensor([perceptual_hash(im) for im in kept_images])
    return tensors, records


def extract_features(images_dir: str, rows: List[dict], work_dir: str, encoder, extractor, config: BankBuildConfig) -> List[str]:
    """Pass 1: writes (or finds, when resuming) one shard per `shard_size` rows; returns the shard paths."""
    os.makedirs(work_dir, exist_ok=True)
    paths = []
    with tqdm(total=len(rows), desc="bank: features", unit="tile") as progress:
        for number, start in enumerate(range(0, len(rows), config.shard_size)):
            path = os.path.join(work_dir, f"features-{number:05d}.safetensors")
            chunk = rows[start : start + config.shard_size]
            if not os.path.isfile(path):
                tensors, records = _extract_shard(chunk, images_dir, encoder, extractor, config)
                atomic_save_safetensors(tensors, path, {"records": records})
            paths.append(path)
            progress.update(len(chunk))
    return paths


def _load_kept(paths: List[str]) -> tuple[List[dict], Dict[str, torch.Tensor], Dict[str, int]]:
    """Records and features of the tiles that passed QC (thumbnails stay on disk: see `_read_rows`)."""
    kept, pieces, counts = [], {}, {"tiles": 0, "unreadable": 0, "failed_quality": 0}
    for number, path in enumerate(paths):
        with safe_open(path, framework="pt") as f:
            records = json.loads(f.metadata()["unipath"])["records"]
            for key in f.keys():
                if key != "thumbnails":
                    pieces.setdefault(key, []).append(f.get_tensor(key))
        counts["tiles"] += len(records)
        counts["unreadable"] += sum(r["reason"] == "unreadable image" for r in records)
        counts["failed_quality"] += sum(not r["passed"] and r["reason"] != "unreadable image" for r in records)
        passed = [r for r in records if r["passed"]]
        kept += [{**r, "shard": number, "row": row} for row, r in enumerate(passed)]
    return kept, {k: torch.cat(v) for k, v in pieces.items()}, counts


def _read_rows(paths: List[str], records: List[dict], key: str) -> torch.Tensor:
    """`key` rows of the given records, read shard by shard (memory: the selected rows only)."""
    rows = []
    for record in records:
        with safe_open(paths[record["shard"]], framework="pt") as f:
            rows.append(f.get_slice(key)[record["row"] : record["row"] + 1])
    return torch.cat(rows)


def build_bank(
    images_dir: str,
    captions_path: str,
    out_dir: str,
    encoder=None,
    feature_extractor=None,
    config: Optional[BankBuildConfig] = None,
    work_dir: Optional[str] = None,
    llm_filter: Optional[Callable[[List[str]], List[str]]] = None,
) -> PrototypeBank:
    """Builds, saves and returns a prototype bank.

    Args:
        images_dir: folder of tiles (paths in the captions file are relative to it).
        captions_path: `.jsonl` or `.csv` with `file_name` and `text` columns.
        out_dir: where the bank folder is written (replaced atomically).
        encoder: retrieval encoder (`encode_text` and `encode_image`); default: the offline default encoder.
        feature_extractor: image encoder for the prototype features; default: the encoder's image features.
        config: curation settings.
        work_dir: where pass-1 shards go (default `out_dir + ".work"`); keep it to resume an interrupted build.
        llm_filter: optional hook that receives candidate keywords and returns those to keep.
    """
    from .encoders import default_encoder
    from .lexicon import Lexicon

    config = config or BankBuildConfig()
    encoder = encoder or default_encoder()
    extractor = feature_extractor or encoder
    rows = read_metadata_file(captions_path)
    missing = [c for c in ("file_name", "text") if rows and c not in rows[0]]
    if not rows or missing:
        raise DataError(f"{captions_path} must list tiles with columns file_name and text" + (f"; missing {missing}" if missing else "; it is empty") + ".")
    if config.size is not None and config.size < 1:
        raise ValueError(f"`size` must be >= 1; got {config.size}.")

    work_dir = work_dir or os.path.normpath(out_dir) + ".work"
    shards = extract_features(images_dir, rows, work_dir, encoder, extractor, config)
    kept, tensors, counts = _load_kept(shards)
    if not kept:
        raise DataError(f"No tile passed quality control (min_tissue={config.min_tissue}, min_blur={config.min_blur}); see {work_dir}.")
    hashes = [int(h) & ((1 << 64) - 1) for h in tensors["phash"].tolist()]
    unique = deduplicate_hashes(hashes, config.dedup_distance) if config.dedup_distance >= 0 else list(range(len(kept)))
    counts["duplicates"] = len(kept) - len(unique)
    if config.size is not None and config.size < len(unique):
        picked = kmeans_sample(tensors["image_features"][unique].numpy(), config.size, seed=config.seed)
        selected = [unique[i] for i in picked]
    else:
        selected = unique
    counts["entries"] = len(selected)

    captions = [kept[i]["caption"] for i in selected]
    vocabulary = build_vocabulary([kept[i]["caption"] for i in unique], Lexicon.default().is_term,
                                  min_count=config.min_keyword_count, max_size=config.max_vocabulary, llm_filter=llm_filter)
    pattern = keyword_pattern(vocabulary)
    entries = [
        PrototypeEntry(n, list(dict.fromkeys(m.group(0).lower() for m in pattern.finditer(c))) if pattern else [], c, kept[i]["file_name"])
        for n, (i, c) in enumerate(zip(selected, captions))
    ]
    index = torch.tensor(selected, dtype=torch.long)
    prototype_features = tensors.get("prototype_features", tensors["image_features"])
    bank = PrototypeBank(
        entries, prototype_features[index], encoder.encode_text(captions), tensors["image_features"][index],
        _read_rows(shards, [kept[i] for i in selected], "thumbnails"), vocabulary, encoder.name, extractor.name if extractor is not encoder else encoder.name,
    )
    staging = os.path.normpath(out_dir) + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    bank.save_pretrained(staging)
    atomic_write_json({"config": asdict(config), "counts": counts, "vocabulary_size": len(vocabulary)}, os.path.join(staging, "build_report.json"))
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    logger.info("Bank written to %s: %s", out_dir, counts)
    return bank
