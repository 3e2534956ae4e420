"""The condition token sequence that enters the transformer's cross-attention."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

#: The three condition streams, in the order they are concatenated.
STREAMS: Tuple[str, ...] = ("text", "dst", "prototype")


def check_stream_names(streams: Sequence[str], argument: str = "streams") -> Tuple[str, ...]:
    """Returns `streams` as a tuple in canonical order, or raises `ValueError` naming `argument`."""
    if isinstance(streams, str):
        streams = (streams,)
    unknown = [s for s in streams if s not in STREAMS]
    if unknown:
        raise ValueError(f"`{argument}` has unknown stream name(s) {unknown}; accepted names are {list(STREAMS)}.")
    if not streams:
        raise ValueError(f"`{argument}` must name at least one of {list(STREAMS)}.")
    return tuple(s for s in STREAMS if s in streams)


def assemble_conditioning(
    parts: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
    prototype_ids: Optional[List[List[int]]] = None,
    prompts: Optional[List[str]] = None,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> "UniPathConditioning":
    """Concatenates `{stream: (embeds, mask)}` in canonical stream order into one conditioning."""
    streams = check_stream_names(list(parts))
    spans, start = {}, 0
    for s in streams:
        spans[s] = (start, start + parts[s][0].shape[1])
        start = spans[s][1]
    embeds = torch.cat([parts[s][0].to(device=device, dtype=dtype) for s in streams], dim=1)
    mask = torch.cat([parts[s][1].to(device) for s in streams], dim=1)
    return UniPathConditioning(embeds, mask, spans, prototype_ids or [], prompts or [])


@dataclass
class UniPathConditioning:
    """Condition tokens for a batch of prompts: all streams concatenated into one masked sequence.

    Attributes:
        embeds: `[batch, tokens, cond_dim]` condition embeddings (raw text, DSTs, prototypes, in that order).
        mask: `[batch, tokens]` 1 for a real token, 0 for padding.
        spans: `{stream: (start, end)}` the token range of each stream present in `embeds`.
        prototype_ids: per sample, the prototype bank ids whose tokens fill the prototype stream.
        prompts: the prompts the conditioning was encoded from (for records; may be empty).
        prototype_reasons: per sample and prototype, why it was chosen.
        attributes: per sample, the prompt's attribute bundle as a dict (may be empty).
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    spans: Dict[str, Tuple[int, int]]
    prototype_ids: List[List[int]] = field(default_factory=list)
    prompts: List[str] = field(default_factory=list)
    prototype_reasons: List[List[List[str]]] = field(default_factory=list)
    attributes: List[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.embeds.ndim != 3 or self.mask.shape != self.embeds.shape[:2]:
            raise ValueError(
                f"`embeds` must be [batch, tokens, dim] and `mask` [batch, tokens]; got {tuple(self.embeds.shape)} "
                f"and {tuple(self.mask.shape)}."
            )
        if not self.prototype_ids:
            self.prototype_ids = [[] for _ in range(len(self))]
        if not self.prototype_reasons:
            self.prototype_reasons = [[[] for _ in ids] for ids in self.prototype_ids]
        if not self.attributes:
            self.attributes = [{} for _ in range(len(self))]

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @property
    def streams(self) -> Tuple[str, ...]:
        """The streams this conditioning holds, in canonical order."""
        return tuple(s for s in STREAMS if s in self.spans)

    def to(self, device=None, dtype=None) -> "UniPathConditioning":
        """Moves the embeddings (and the mask, device only) to `device` / `dtype`."""
        return replace(self, embeds=self.embeds.to(device=device, dtype=dtype), mask=self.mask.to(device=device))

    def select(self, streams: Sequence[str]) -> "UniPathConditioning":
        """Keeps only `streams` (their tokens are cut out of the sequence, not merely masked)."""
        streams = check_stream_names(streams)
        missing = [s for s in streams if s not in self.spans]
        if missing:
            raise ValueError(
                f"`streams` asks for {missing}, but the conditioning only holds {list(self.streams)}; encode the "
                "prompt again with those streams."
            )
        pieces, spans, start = [], {}, 0
        for s in streams:
            a, b = self.spans[s]
            pieces.append((a, b))
            spans[s] = (start, start + b - a)
            start += b - a
        index = torch.cat([torch.arange(a, b) for a, b in pieces]).to(self.embeds.device)
        keep = "prototype" in streams
        return replace(
            self, embeds=self.embeds[:, index], mask=self.mask[:, index], spans=spans,
            prototype_ids=self.prototype_ids if keep else [[] for _ in range(len(self))],
            prototype_reasons=self.prototype_reasons if keep else [[] for _ in range(len(self))],
        )

    def without(self, stream: str) -> "UniPathConditioning":
        """The conditioning with `stream` removed for guidance: its embeddings zeroed and its tokens masked."""
        a, b = self.spans[stream]
        embeds, mask = self.embeds.clone(), self.mask.clone()
        embeds[:, a:b] = 0
        mask[:, a:b] = 0
        return replace(self, embeds=embeds, mask=mask)

    def with_dropout(self, drop_all: torch.Tensor, drop_stream: Dict[str, torch.Tensor]) -> "UniPathConditioning":
        """Training-time condition dropout matching the guidance branches used at inference.

        Args:
            drop_all: `[batch]` bool; those samples get the null condition (zero embeddings, mask kept).
            drop_stream: `{stream: [batch] bool}`; those samples get that stream zeroed and masked out.
        """
        keep = torch.ones(self.mask.shape, dtype=torch.bool, device=self.mask.device)
        for stream, dropped in drop_stream.items():
            a, b = self.spans[stream]
            keep[:, a:b] &= ~dropped.to(keep.device)[:, None]
        mask = self.mask * keep
        zero = (~keep) | drop_all.to(keep.device)[:, None]
        return replace(self, embeds=self.embeds.masked_fill(zero[..., None], 0.0), mask=mask)

    def null(self) -> "UniPathConditioning":
        """The original UniPath's unconditional input: zero embeddings for every stream, the same mask."""
        return replace(self, embeds=torch.zeros_like(self.embeds))

    def repeat_interleave(self, repeats: int) -> "UniPathConditioning":
        """Each sample repeated `repeats` times in a row (for several images per prompt)."""
        return replace(
            self,
            embeds=self.embeds.repeat_interleave(repeats, dim=0),
            mask=self.mask.repeat_interleave(repeats, dim=0),
            prototype_ids=[list(ids) for ids in self.prototype_ids for _ in range(repeats)],
            prompts=[p for p in self.prompts for _ in range(repeats)],
            prototype_reasons=[r for r in self.prototype_reasons for _ in range(repeats)],
            attributes=[a for a in self.attributes for _ in range(repeats)],
        )

    @staticmethod
    def cat(items: Sequence["UniPathConditioning"]) -> "UniPathConditioning":
        """Concatenates conditionings with the same spans along the batch."""
        spans = items[0].spans
        if any(c.spans != spans for c in items):
            raise ValueError("Only conditionings with identical stream spans can be concatenated.")
        return UniPathConditioning(
            embeds=torch.cat([c.embeds for c in items]),
            mask=torch.cat([c.mask for c in items]),
            spans=dict(spans),
            prototype_ids=[ids for c in items for ids in c.prototype_ids],
            prompts=[p for c in items for p in c.prompts],
            prototype_reasons=[r for c in items for r in c.prototype_reasons],
            attributes=[a for c in items for a in c.attributes],
        )

    def save(self, path: str) -> None:
        """Writes the conditioning to a safetensors file (atomically: a temp file, then a rename)."""
        from .io_utils import atomic_save_safetensors

        metadata = {"spans": self.spans, "prototype_ids": self.prototype_ids, "prompts": self.prompts,
                    "prototype_reasons": self.prototype_reasons, "attributes": self.attributes}
        atomic_save_safetensors({"embeds": self.embeds.contiguous(), "mask": self.mask.contiguous()}, path, metadata)

    @classmethod
    def load(cls, path: str, device: Optional[torch.device] = None) -> "UniPathConditioning":
        """Reads a conditioning written by `save`."""
        from .io_utils import load_safetensors_with_metadata

        tensors, metadata = load_safetensors_with_metadata(path, device=device)
        spans = {k: tuple(v) for k, v in metadata["spans"].items()}
        return cls(tensors["embeds"], tensors["mask"], spans, metadata["prototype_ids"], metadata["prompts"],
                   metadata.get("prototype_reasons", []), metadata.get("attributes", []))
