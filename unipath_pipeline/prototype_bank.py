"""Prototype bank: morphology components with keywords, descriptions and feature vectors."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from .io_utils import atomic_save_safetensors, atomic_write_json

BANK_FILE = "bank.json"
FEATURES_FILE = "features.safetensors"
FORMAT_VERSION = 1


@dataclass
class PrototypeEntry:
    """One bank entry. `id` is its row in the bank (0-based)."""

    id: int
    keywords: List[str] = field(default_factory=list)
    description: str = ""


class PrototypeBank:
    """A prototype bank: `N` entries and an `[N, feature_dim]` matrix of prototype features.

    Saved as a pipeline component folder: `bank.json` (entries) and `features.safetensors` (features).
    Choose prototypes by id with `select(ids)`.

    Args:
        entries: the entries; entry `i` must have `id == i`.
        features: `[N, feature_dim]` prototype features, one row per entry.
    """

    def __init__(self, entries: Sequence[PrototypeEntry], features: torch.Tensor):
        entries = [e if isinstance(e, PrototypeEntry) else PrototypeEntry(**e) for e in entries]
        if features.ndim != 2:
            raise ValueError(f"`features` must be [num_entries, feature_dim]; got shape {tuple(features.shape)}.")
        if len(entries) != features.shape[0]:
            raise ValueError(f"The bank has {len(entries)} entries but {features.shape[0]} feature rows.")
        bad = [(i, e.id) for i, e in enumerate(entries) if e.id != i]
        if bad:
            raise ValueError(f"Entry ids must equal their row (0..{len(entries) - 1}); mismatches (row, id): {bad[:5]}.")
        if not torch.isfinite(features).all():
            raise ValueError("`features` contains NaN or infinite values.")
        self.entries: List[PrototypeEntry] = entries
        self.features = features.float()

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"PrototypeBank(entries={len(self)}, feature_dim={self.feature_dim})"

    @property
    def feature_dim(self) -> int:
        """Width of a prototype feature."""
        return self.features.shape[1]

    def check_ids(self, ids: Iterable[int], argument: str = "prototype_ids") -> List[int]:
        """Returns `ids` as ints, or raises `ValueError` naming `argument` and the valid range."""
        ids = list(ids)
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"`{argument}` has id(s) {bad} outside the bank's range 0..{len(self) - 1}.")
        return ids

    def select(self, ids: Iterable[int]) -> torch.Tensor:
        """The `[len(ids), feature_dim]` features of the entries `ids`, in that order."""
        ids = self.check_ids(ids)
        return self.features[torch.tensor(ids, dtype=torch.long)] if ids else self.features[:0]

    @cached_property
    def keyword_index(self) -> Dict[str, List[int]]:
        """The inverted index: lower-cased keyword -> ids of the entries that carry it."""
        index: Dict[str, List[int]] = {}
        for entry in self.entries:
            for keyword in dict.fromkeys(k.strip().lower() for k in entry.keywords if k.strip()):
                index.setdefault(keyword, []).append(entry.id)
        return index

    @cached_property
    def _keyword_pattern(self) -> Optional[re.Pattern]:
        if not self.keyword_index:
            return None
        alternatives = "|".join(re.escape(k) for k in sorted(self.keyword_index, key=len, reverse=True))
        return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def match_keywords(self, text: str) -> List[str]:
        """Keywords found in `text`: case-insensitive, whole words, longest first, non-overlapping, in text order."""
        if self._keyword_pattern is None:
            return []
        return list(dict.fromkeys(m.group(0).lower() for m in self._keyword_pattern.finditer(text)))

    def retrieve_by_keywords(
        self,
        text: str,
        max_keywords: int = 4,
        per_keyword: int = 2,
        limit: int = 16,
        exclude: Iterable[int] = (),
        generator: Optional[torch.Generator] = None,
    ) -> List[int]:
        """The original's keyword recall: keep the `max_keywords` rarest keywords found in `text` and sample
        `per_keyword` entries for each (with `generator`), never an id in `exclude`; at most `limit` ids."""
        excluded, chosen = set(exclude), []
        keywords = sorted(self.match_keywords(text), key=lambda k: len(self.keyword_index[k]))[:max_keywords]
        for keyword in keywords:
            candidates = [i for i in self.keyword_index[keyword] if i not in excluded and i not in chosen]
            order = torch.randperm(len(candidates), generator=generator).tolist()
            chosen.extend(candidates[j] for j in order[:per_keyword])
        return chosen[:limit]

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Writes `bank.json` and `features.safetensors` into `save_directory` (each atomically)."""
        os.makedirs(save_directory, exist_ok=True)
        atomic_save_safetensors({"features": self.features}, os.path.join(save_directory, FEATURES_FILE))
        atomic_write_json(
            {"format_version": FORMAT_VERSION, "feature_dim": self.feature_dim, "entries": [asdict(e) for e in self.entries]},
            os.path.join(save_directory, BANK_FILE),
        )

    @classmethod
    def from_pretrained(cls, pretrained_path: str, subfolder: Optional[str] = None, **kwargs) -> "PrototypeBank":
        """Loads a bank folder written by `save_pretrained` (a local folder, or a Hub repo id with `subfolder`)."""
        folder = os.path.join(pretrained_path, subfolder) if subfolder else pretrained_path
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            root = snapshot_download(pretrained_path, allow_patterns=[f"{subfolder}/*"] if subfolder else None)
            folder = os.path.join(root, subfolder) if subfolder else root
        bank_path, features_path = os.path.join(folder, BANK_FILE), os.path.join(folder, FEATURES_FILE)
        for path in (bank_path, features_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Not a prototype bank folder: {path} is missing.")
        with open(bank_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{bank_path}: unsupported format_version {meta.get('format_version')!r}.")
        from safetensors.torch import load_file

        features = load_file(features_path)["features"]
        if features.shape[1] != meta["feature_dim"]:
            raise ValueError(f"{features_path}: feature width {features.shape[1]} != feature_dim {meta['feature_dim']}.")
        return cls([PrototypeEntry(**e) for e in meta["entries"]], features)
