"""Prototype bank: morphology components with keywords, descriptions, retrieval features and prototype features.

Retrieval reproduces the original UniPath (the union of text->text top-k, text->image top-k and keyword recall,
capped at the slot count) and adds explicit ids, explicit keywords and a reference image. Keyword recall is
harmonised through the pathology lexicon: "dark nuclei" in a prompt recalls entries keyed "hyperchromatic nuclei".
Every chosen prototype records why it was chosen.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Dict, Iterable, List, Optional, Sequence

import PIL.Image
import torch

from .io_utils import atomic_save_safetensors, atomic_write_json

BANK_FILE = "bank.json"
FEATURES_FILE = "features.safetensors"
FORMAT_VERSION = 1
QUERY_CACHE_SIZE = 8192


def keyword_pattern(keywords: Iterable[str]) -> Optional[re.Pattern]:
    """A regex finding `keywords` case-insensitively as whole words, longest first (so non-overlapping)."""
    keywords = sorted(set(keywords), key=len, reverse=True)
    if not keywords:
        return None
    return re.compile(rf"(?<!\w)(?:{'|'.join(re.escape(k) for k in keywords)})(?!\w)", re.IGNORECASE)


@dataclass
class PrototypeEntry:
    """One bank entry. `id` is its row in the bank (0-based); `source` names the tile it came from."""

    id: int
    keywords: List[str] = field(default_factory=list)
    description: str = ""
    source: str = ""


@dataclass
class RetrievedPrototype:
    """A chosen prototype and every reason it was chosen (e.g. `"text->text 0.83"`, `"keyword 'gland'"`)."""

    id: int
    reasons: List[str]


class PrototypeBank:
    """`N` entries with `[N, feature_dim]` prototype features and optional retrieval features and thumbnails.

    Saved as a pipeline component folder: `bank.json` (entries, vocabulary, encoder names) and `features.safetensors`
    (`features`, optional `text_features`, `image_features`, `thumbnails`).

    Args:
        entries: the entries; entry `i` must have `id == i`; its keywords must be in `vocabulary`.
        features: `[N, feature_dim]` prototype features (the adapter's input).
        text_features: `[N, d]` L2-normalised retrieval features of the descriptions (from `encoder`).
        image_features: `[N, d]` L2-normalised retrieval features of the tiles (from `encoder`).
        thumbnails: `[N, h, w, 3]` uint8 tiles, for reports and UIs.
        vocabulary: the keyword vocabulary; defaults to the entries' keywords.
        encoder: name of the encoder that made the retrieval features (queries must use the same one).
        feature_extractor: name of the model that made the prototype features.
    """

    def __init__(
        self,
        entries: Sequence[PrototypeEntry],
        features: torch.Tensor,
        text_features: Optional[torch.Tensor] = None,
        image_features: Optional[torch.Tensor] = None,
        thumbnails: Optional[torch.Tensor] = None,
        vocabulary: Optional[Sequence[str]] = None,
        encoder: Optional[str] = None,
        feature_extractor: Optional[str] = None,
    ):
        entries = [e if isinstance(e, PrototypeEntry) else PrototypeEntry(**e) for e in entries]
        if features.ndim != 2:
            raise ValueError(f"`features` must be [num_entries, feature_dim]; got shape {tuple(features.shape)}.")
        if len(entries) != features.shape[0]:
            raise ValueError(f"The bank has {len(entries)} entries but {features.shape[0]} feature rows.")
        for name, tensor, ndim in (("text_features", text_features, 2), ("image_features", image_features, 2), ("thumbnails", thumbnails, 4)):
            if tensor is not None and (tensor.ndim != ndim or tensor.shape[0] != len(entries)):
                raise ValueError(f"`{name}` must have {ndim} dimensions and {len(entries)} rows; got shape {tuple(tensor.shape)}.")
        bad = [(i, e.id) for i, e in enumerate(entries) if e.id != i]
        if bad:
            raise ValueError(f"Entry ids must equal their row (0..{len(entries) - 1}); mismatches (row, id): {bad[:5]}.")
        if not torch.isfinite(features).all():
            raise ValueError("`features` contains NaN or infinite values.")
        keywords = {k.lower() for e in entries for k in e.keywords}
        self.vocabulary: List[str] = sorted(keywords) if vocabulary is None else [v.lower() for v in vocabulary]
        unknown = sorted(keywords - set(self.vocabulary))
        if unknown:
            raise ValueError(f"Entry keywords missing from the vocabulary (inverted index inconsistent): {unknown[:5]}.")
        if (text_features is not None or image_features is not None) and not encoder:
            raise ValueError("Retrieval features need `encoder`, the name of the encoder that made them.")
        self.entries: List[PrototypeEntry] = entries
        self.features = features.float()
        self.text_features = None if text_features is None else text_features.float()
        self.image_features = None if image_features is None else image_features.float()
        self.thumbnails = thumbnails
        self.encoder, self.feature_extractor = encoder, feature_extractor

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"PrototypeBank(entries={len(self)}, feature_dim={self.feature_dim}, vocabulary={len(self.vocabulary)}, encoder={self.encoder!r})"

    @property
    def feature_dim(self) -> int:
        """Width of a prototype feature."""
        return self.features.shape[1]

    # --------------------------------------------------------------------------------------------------------------
    # Choosing entries
    # --------------------------------------------------------------------------------------------------------------

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
        index: Dict[str, List[int]] = {k: [] for k in self.vocabulary}
        for entry in self.entries:
            for keyword in dict.fromkeys(k.strip().lower() for k in entry.keywords if k.strip()):
                index[keyword].append(entry.id)
        return {k: ids for k, ids in index.items() if ids}

    @cached_property
    def _keyword_pattern(self) -> Optional[re.Pattern]:
        return keyword_pattern(self.keyword_index)

    @cached_property
    def _keywords_by_concept(self) -> Dict[str, List[str]]:
        from .lexicon import Lexicon

        lexicon, by_concept = Lexicon.default(), {}
        for keyword in self.keyword_index:
            for concept in lexicon.normalize(keyword):
                by_concept.setdefault(concept.id, []).append(keyword)
        return by_concept

    def match_keywords(self, text: str, harmonize: bool = True) -> Dict[str, str]:
        """Bank keywords recalled by `text`, in text order, each with how it was found.

        Literal matches are case-insensitive, whole words, longest first and non-overlapping. With `harmonize`,
        a pathology concept found in `text` (lexicon synonyms, e.g. "dark nuclei") also recalls the bank keywords
        that name the same concept (e.g. "hyperchromatic nuclei").
        """
        found: Dict[str, str] = {}
        if self._keyword_pattern is not None:
            for m in self._keyword_pattern.finditer(text):
                found.setdefault(m.group(0).lower(), f"keyword '{m.group(0).lower()}'")
        if harmonize:
            from .lexicon import Lexicon

            for match in Lexicon.default().find(text):
                for keyword in self._keywords_by_concept.get(match.concept.id, []):
                    found.setdefault(keyword, f"keyword '{keyword}' (concept '{match.concept.name}' from '{match.text}')")
        return found

    def retrieve_by_keywords(
        self,
        text: str,
        max_keywords: int = 4,
        per_keyword: int = 2,
        exclude: Iterable[int] = (),
        generator: Optional[torch.Generator] = None,
    ) -> List[RetrievedPrototype]:
        """The original's keyword recall: keep the `max_keywords` rarest keywords recalled by `text` and sample
        `per_keyword` entries for each (with `generator`), never an id in `exclude`."""
        excluded, chosen = set(exclude), {}
        recalled = self.match_keywords(text)
        for keyword in sorted(recalled, key=lambda k: len(self.keyword_index[k]))[:max_keywords]:
            candidates = [i for i in self.keyword_index[keyword] if i not in excluded and i not in chosen]
            order = torch.randperm(len(candidates), generator=generator).tolist()
            for j in order[:per_keyword]:
                chosen[candidates[j]] = RetrievedPrototype(candidates[j], [recalled[keyword]])
        return list(chosen.values())

    def retrieve(
        self,
        prompt: Optional[str] = None,
        *,
        ids: Sequence[int] = (),
        keywords: Sequence[str] = (),
        reference_image: Optional[PIL.Image.Image] = None,
        encoder=None,
        text_top_k: int = 4,
        image_top_k: int = 4,
        max_keywords: int = 4,
        per_keyword: int = 2,
        limit: int = 16,
        exclude: Iterable[int] = (),
        generator: Optional[torch.Generator] = None,
    ) -> List[RetrievedPrototype]:
        """Chooses up to `limit` prototypes, each with its reasons; deterministic for a fixed `generator`.

        In order of priority: explicit `ids`; entries carrying the explicit `keywords` (`per_keyword` sampled each);
        the `image_top_k` entries nearest to `reference_image`; then from `prompt`, as the original: text->text
        top-`text_top_k` (prompt against descriptions), text->image top-`image_top_k` (only with a joint text-image
        encoder such as CONCH), and keyword recall. Retrieval features need `encoder` (the one that built the bank);
        a bank without retrieval features uses keyword recall only.
        """
        excluded = set(exclude)
        chosen: Dict[int, RetrievedPrototype] = {}

        def add(items: Iterable[RetrievedPrototype]) -> None:
            for item in items:
                if item.id in excluded:
                    continue
                if item.id in chosen:
                    chosen[item.id].reasons.extend(r for r in item.reasons if r not in chosen[item.id].reasons)
                else:
                    chosen[item.id] = RetrievedPrototype(item.id, list(item.reasons))

        add(RetrievedPrototype(i, ["explicit id"]) for i in self.check_ids(ids, "ids"))
        for keyword in keywords:
            key = keyword.strip().lower()
            if key not in self.keyword_index:
                raise ValueError(f"`keywords` has {keyword!r}, which no bank entry carries (e.g. {sorted(self.keyword_index)[:5]}).")
            candidates = [i for i in self.keyword_index[key] if i not in excluded]
            order = torch.randperm(len(candidates), generator=generator).tolist()[:per_keyword]
            add(RetrievedPrototype(candidates[j], [f"requested keyword '{key}'"]) for j in order)
        if reference_image is not None:
            query = self._encoder(encoder, "image").encode_image([reference_image])[0]
            add(self._nearest(query, self._features("image"), image_top_k, "reference image"))
        if prompt:
            if self.text_features is not None:
                query = self._text_query(self._encoder(encoder, "text"), prompt)
                add(self._nearest(query, self.text_features, text_top_k, "text->text"))
                if self.image_features is not None and self._encoder(encoder, "text").joint_space:
                    add(self._nearest(query, self.image_features, image_top_k, "text->image"))
            add(self.retrieve_by_keywords(prompt, max_keywords, per_keyword, excluded, generator))
        return list(chosen.values())[:limit]

    def _text_query(self, encoder, prompt: str) -> torch.Tensor:
        """The prompt's text features, remembered for the last `QUERY_CACHE_SIZE` prompts (training repeats captions
        every epoch; retrieval then costs no encoder forward after the first)."""
        cache = self.__dict__.setdefault("_query_cache", {})
        key = (encoder.name, prompt)
        if key not in cache:
            if len(cache) >= QUERY_CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[key] = encoder.encode_text([prompt])[0]
        return cache[key]

    def _features(self, kind: str) -> torch.Tensor:
        features = self.image_features if kind == "image" else self.text_features
        if features is None:
            raise ValueError(f"This bank has no {kind} retrieval features; rebuild it with `unipath bank build`.")
        return features

    def _encoder(self, encoder, modality: str):
        if encoder is None:
            from .encoders import DEFAULT_ENCODER_NAME, EncoderUnavailable, default_encoder

            if self.encoder != DEFAULT_ENCODER_NAME:
                raise EncoderUnavailable(
                    f"{modality} retrieval in this bank needs its encoder {self.encoder!r}; pass `encoder=` "
                    "(see unipath_pipeline.encoders.load_encoder)."
                )
            encoder = default_encoder()
        if encoder.name != self.encoder:
            from .encoders import EncoderUnavailable

            raise EncoderUnavailable(f"The bank was built with encoder {self.encoder!r}, not {encoder.name!r}; queries must use the same one.")
        return encoder

    @staticmethod
    def _nearest(query: torch.Tensor, keys: torch.Tensor, k: int, label: str) -> List[RetrievedPrototype]:
        from .encoders import cosine_top_k

        return [RetrievedPrototype(i, [f"{label} {score:.3f}"]) for i, score in cosine_top_k(query, keys, k)]

    # --------------------------------------------------------------------------------------------------------------
    # Saving and loading
    # --------------------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Writes `features.safetensors` then `bank.json` into `save_directory` (each atomically)."""
        os.makedirs(save_directory, exist_ok=True)
        tensors = {"features": self.features}
        for name in ("text_features", "image_features", "thumbnails"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        atomic_save_safetensors(tensors, os.path.join(save_directory, FEATURES_FILE))
        atomic_write_json(
            {
                "format_version": FORMAT_VERSION, "feature_dim": self.feature_dim, "num_entries": len(self),
                "encoder": self.encoder, "feature_extractor": self.feature_extractor, "vocabulary": self.vocabulary,
                "entries": [asdict(e) for e in self.entries],
            },
            os.path.join(save_directory, BANK_FILE),
        )

    @classmethod
    def from_pretrained(cls, pretrained_path: str, subfolder: Optional[str] = None, **kwargs) -> "PrototypeBank":
        """Loads and validates a bank folder (a local folder, or a Hub repo id; `subfolder` inside either)."""
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

        tensors = load_file(features_path)
        if tensors["features"].shape[1] != meta["feature_dim"]:
            raise ValueError(f"{features_path}: feature width {tensors['features'].shape[1]} != feature_dim {meta['feature_dim']}.")
        try:
            return cls(
                [PrototypeEntry(**e) for e in meta["entries"]], tensors["features"], tensors.get("text_features"),
                tensors.get("image_features"), tensors.get("thumbnails"), meta.get("vocabulary"), meta.get("encoder"),
                meta.get("feature_extractor"),
            )
        except ValueError as error:
            raise ValueError(f"{folder}: invalid prototype bank: {error}") from None
