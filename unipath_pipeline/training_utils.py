"""Pieces of UniPath training shared by the training script, the precompute script and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .conditioning import STREAMS, UniPathConditioning, assemble_conditioning
from .dst_encoder import DSTEncoder, DSTTokens
from .prototype_adapter import PrototypeAdapter

TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator that depends only on `(seed, step, salt)`: randomness that survives resumption."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + salt)


def sample_sigmas(batch: int, scheme: str, generator: torch.Generator, logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Flow-matching noise levels in (0, 1): uniform, or logit-normal (SD3's default)."""
    if scheme == "uniform":
        return torch.rand(batch, generator=generator)
    if scheme == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator) * logit_std + logit_mean)
    raise ValueError(f"`weighting_scheme` must be one of {list(TIMESTEP_SAMPLING)}; got {scheme!r}.")


def flow_matching_inputs(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor):
    """`(noisy, target)`: `x_t = (1 - s) x_0 + s n` and the velocity `n - x_0` the transformer learns to predict."""
    s = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents)
    return (1.0 - s) * latents + s * noise, noise - latents


@dataclass
class ConditionDropout:
    """Per-stream and joint condition dropout probabilities (the original used 10% joint dropout)."""

    all_streams: float = 0.1
    text: float = 0.0
    dst: float = 0.0
    prototype: float = 0.0

    def __post_init__(self) -> None:
        for name in ("all_streams", *STREAMS):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Condition dropout for {name!r} must be in [0, 1]; got {value}.")

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """`(drop_all [batch], {stream: drop [batch]})` boolean draws."""
        draws = torch.rand(batch, 1 + len(STREAMS), generator=generator)
        drop_all = draws[:, 0] < self.all_streams
        return drop_all, {s: draws[:, 1 + i] < getattr(self, s) for i, s in enumerate(STREAMS)}


class UniPathTrainable(nn.Module):
    """The trained parts of UniPath in one module (so that DDP / FSDP see a single model).

    `forward` builds the conditioning (DST queries through the frozen MLLM, the raw-text projection, prototype
    tokens), applies condition dropout and runs the transformer on the noisy latents.
    """

    def __init__(self, transformer: nn.Module, dst_encoder: DSTEncoder, prototype_adapter: PrototypeAdapter):
        super().__init__()
        self.transformer, self.dst_encoder, self.prototype_adapter = transformer, dst_encoder, prototype_adapter

    def conditioning(
        self,
        mllm: nn.Module,
        tokens: DSTTokens,
        prototype_features: Sequence[torch.Tensor],
        streams: Sequence[str] = STREAMS,
        text_embeds: Optional[torch.Tensor] = None,
    ) -> UniPathConditioning:
        """The condition sequence for a batch (as `UniPathPipeline.encode_prompt`, with gradients)."""
        parts = self.dst_encoder(mllm, tokens, [s for s in streams if s != "prototype"], text_embeds=text_embeds)
        if "prototype" in streams:
            parts["prototype"] = self.prototype_adapter(prototype_features)
        return assemble_conditioning(parts, dtype=self.transformer.dtype)

    def forward(
        self,
        mllm: nn.Module,
        noisy_latents: torch.Tensor,
        sigmas: torch.Tensor,
        tokens: DSTTokens,
        prototype_features: Sequence[torch.Tensor],
        drop_all: torch.Tensor,
        drop_stream: Dict[str, torch.Tensor],
        streams: Sequence[str] = STREAMS,
        text_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The transformer's velocity prediction for `noisy_latents` at noise levels `sigmas`."""
        cond = self.conditioning(mllm, tokens, prototype_features, streams, text_embeds)
        cond = cond.with_dropout(drop_all, {s: d for s, d in drop_stream.items() if s in cond.spans})
        return self.transformer(
            noisy_latents,
            encoder_hidden_states=cond.embeds,
            encoder_attention_mask=cond.mask,
            timestep=sigmas.to(noisy_latents.device) * 1000.0,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]


def pad_prototype_features(features: List[torch.Tensor], slots: int, feature_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[n_i, F]` tensors -> `([batch, slots, F], [batch, slots] mask)` (for caches and collation)."""
    padded = torch.zeros(len(features), slots, feature_dim)
    mask = torch.zeros(len(features), slots, dtype=torch.bool)
    for i, f in enumerate(features):
        padded[i, : len(f)] = f
        mask[i, : len(f)] = True
    return padded, mask


def unpad_prototype_features(padded: torch.Tensor, mask: torch.Tensor) -> List[torch.Tensor]:
    """Inverse of `pad_prototype_features`."""
    return [f[m] for f, m in zip(padded, mask.bool())]
