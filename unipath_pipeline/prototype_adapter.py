"""Prototype adapter: prototype image features -> condition tokens."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class PrototypeAdapter(ModelMixin, ConfigMixin):
    """Projects up to `max_prototypes` prototype features into condition tokens.

    The MLP is the original's `prototype_projector`: Linear(feature_dim, hidden_dim), GELU (exact form),
    Linear(hidden_dim, cond_dim). The output always has `max_prototypes` slots; unused slots are zero tokens with
    mask 0.

    Args:
        feature_dim: width of a prototype feature (1536 for UNI2-h in the original).
        cond_dim: width of the condition tokens (the MLLM hidden size in the original).
        hidden_dim: width of the MLP's hidden layer; `None` means `cond_dim`.
        max_prototypes: number of prototype slots in the condition sequence.
    """

    @register_to_config
    def __init__(self, feature_dim: int, cond_dim: int, hidden_dim: int | None = None, max_prototypes: int = 16):
        super().__init__()
        if max_prototypes < 1:
            raise ValueError(f"`max_prototypes` must be at least 1; got {max_prototypes}.")
        hidden_dim = hidden_dim or cond_dim
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, cond_dim))

    def forward(self, features: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Projects one `[n_i, feature_dim]` tensor of prototype features per sample (`n_i` may be 0).

        Returns:
            `(tokens [batch, max_prototypes, cond_dim], mask [batch, max_prototypes])`.
        """
        cfg = self.config
        weight = self.mlp[0].weight
        padded = weight.new_zeros(len(features), cfg.max_prototypes, cfg.feature_dim)
        mask = torch.zeros(len(features), cfg.max_prototypes, dtype=torch.long, device=weight.device)
        for i, f in enumerate(features):
            if f.ndim != 2 or f.shape[1] != cfg.feature_dim:
                raise ValueError(
                    f"Prototype features must be [n, {cfg.feature_dim}] (the adapter's feature_dim); got "
                    f"{tuple(f.shape)} for sample {i}."
                )
            if f.shape[0] > cfg.max_prototypes:
                raise ValueError(f"At most {cfg.max_prototypes} prototypes per sample; got {f.shape[0]} for sample {i}.")
            padded[i, : f.shape[0]] = f.to(padded)
            mask[i, : f.shape[0]] = 1
        tokens = self.mlp(padded) * mask[..., None].to(weight.dtype)
        return tokens, mask
