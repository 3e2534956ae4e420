"""The training cache: frozen per-sample inputs (VAE latent distributions, raw-text embeddings, DST prompt tokens,
prototype features) in sharded safetensors files with a JSON index, written by `training/precompute.py`."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import torch
from safetensors import safe_open
from torch.nn.functional import pad
from torch.utils.data import Dataset

from .data import DataError
from .io_utils import atomic_save_safetensors, atomic_write_json

INDEX_FILE = "index.json"
CACHE_FORMAT = 1
#: Per-sample tensors every shard holds (first dimension = sample).
CACHE_KEYS = (
    "latent_mean", "latent_std", "text_embeds", "text_attention_mask", "text_input_ids",
    "prefix_input_ids", "prefix_lengths", "prototype_features", "prototype_mask",
)


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def write_shard(folder: str, number: int, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Writes one shard atomically; `samples` are dicts of per-sample tensors plus `caption`, `key`, `prototype_ids`."""
    width = max(int(s["prefix_input_ids"].shape[0]) for s in samples)
    tensors = {}
    for key in CACHE_KEYS:
        if key == "prefix_input_ids":
            padded = torch.zeros(len(samples), width, dtype=torch.long)
            for i, s in enumerate(samples):
                padded[i, : s[key].shape[0]] = s[key]
            tensors[key] = padded
        else:
            tensors[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    meta = {k: [s[k] for s in samples] for k in ("caption", "key", "prototype_ids")}
    atomic_save_safetensors(tensors, os.path.join(folder, shard_name(number)), meta)
    return {"file": shard_name(number), "num_samples": len(samples)}


def write_index(folder: str, shards: List[Dict[str, Any]], info: Dict[str, Any]) -> None:
    atomic_write_json({"format": CACHE_FORMAT, **info, "num_samples": sum(s["num_samples"] for s in shards), "shards": shards}, os.path.join(folder, INDEX_FILE))


class CachedSamples(Dataset):
    """Map-style view of a training cache. Shards are opened lazily and memory-mapped."""

    def __init__(self, folder: str):
        path = os.path.join(folder, INDEX_FILE)
        if not os.path.isfile(path):
            raise DataError(f"--cache_dir {folder!r} has no {INDEX_FILE}; run training/precompute.py first.")
        with open(path, encoding="utf-8") as f:
            self.index = json.load(f)
        if self.index.get("format") != CACHE_FORMAT:
            raise DataError(f"{path}: unsupported cache format {self.index.get('format')!r}.")
        if self.index["num_samples"] == 0:
            raise DataError(f"{path}: the cache holds no samples.")
        self.folder = folder
        self.locations = [(n, i) for n, shard in enumerate(self.index["shards"]) for i in range(shard["num_samples"])]
        self._meta: Dict[int, Dict[str, list]] = {}

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        shard, row = self.locations[index]
        with safe_open(os.path.join(self.folder, self.index["shards"][shard]["file"]), framework="pt") as f:
            if shard not in self._meta:
                self._meta[shard] = json.loads(f.metadata()["unipath"])
            sample = {k: f.get_slice(k)[row : row + 1][0] for k in CACHE_KEYS}
        meta = self._meta[shard]
        sample.update(caption=meta["caption"][row], key=meta["key"][row], prototype_ids=meta["prototype_ids"][row])
        return sample


def collate_cached(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stacks cached samples (prefix ids re-padded to the longest in the batch)."""
    batch: Dict[str, Any] = {"captions": [s["caption"] for s in samples], "keys": [s["key"] for s in samples], "skipped": 0}
    width = max(int(s["prefix_lengths"]) for s in samples)
    for key in CACHE_KEYS:
        if key == "prefix_input_ids":
            batch[key] = torch.stack([pad(s[key][:width], (0, width - min(width, s[key].shape[0]))) for s in samples])
        else:
            batch[key] = torch.stack([s[key] for s in samples])
    batch["positions"] = list(range(len(samples)))
    return batch
