"""LoRA weights for the transformer: the file format, and loading / unloading them into a pipeline.

A LoRA file is `pytorch_lora_weights.safetensors` with keys `transformer.<module>.lora_A.weight` /
`transformer.<module>.lora_B.weight` (diffusers' naming) and the rank and alpha in its metadata. Loading merges
`scale * alpha / rank * B @ A` into each target weight and keeps the original weights, so unloading restores them
exactly; no peft is needed at inference.
"""

from __future__ import annotations

import os
from typing import Dict

import torch

from .io_utils import atomic_save_safetensors, load_safetensors_with_metadata

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
_PREFIX = "transformer."


def save_lora_weights(state_dict: Dict[str, torch.Tensor], save_directory: str, rank: int, alpha: float) -> str:
    """Writes a transformer LoRA state dict (peft's `get_peft_model_state_dict` keys) to `save_directory`."""
    tensors = {k if k.startswith(_PREFIX) else _PREFIX + k: v for k, v in state_dict.items()}
    path = os.path.join(save_directory, LORA_WEIGHT_NAME)
    atomic_save_safetensors(tensors, path, {"rank": rank, "alpha": alpha})
    return path


def _resolve(path: str, weight_name: str) -> str:
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        return os.path.join(path, weight_name)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(path, weight_name)


class UniPathLoraLoaderMixin:
    """`load_lora_weights` / `unload_lora_weights` for pipelines with a `transformer`."""

    def load_lora_weights(self, path: str, weight_name: str = LORA_WEIGHT_NAME, scale: float = 1.0) -> None:
        """Merges transformer LoRA weights from a file, a folder or a Hub repo id (unload any earlier LoRA first).

        Args:
            path: a `.safetensors` file, a folder holding `weight_name`, or a Hub repo id.
            weight_name: the file name inside a folder or repo.
            scale: multiplies the LoRA update.
        """
        if getattr(self, "_lora_originals", None):
            raise ValueError("A LoRA is already loaded; call `unload_lora_weights()` first.")
        file = _resolve(path, weight_name)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No LoRA weights at {file}.")
        tensors, meta = load_safetensors_with_metadata(file)
        if not meta or "rank" not in meta or "alpha" not in meta:
            raise ValueError(f"{file} lacks the LoRA rank/alpha metadata written by unipath's training script.")
        modules = dict(self.transformer.named_modules())
        pairs: Dict[str, Dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if not key.startswith(_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
                raise ValueError(f"{file}: unexpected key {key!r} (expected transformer.<module>.lora_A/B.weight).")
            module, part = key[len(_PREFIX):].rsplit(".lora_", 1)
            pairs.setdefault(module, {})[part[0]] = tensor
        missing = [m for m in pairs if m not in modules or not isinstance(modules[m], torch.nn.Linear)]
        if missing:
            raise ValueError(f"{file}: LoRA targets not found in the transformer as Linear layers: {missing[:5]}.")
        factor = scale * meta["alpha"] / meta["rank"]
        originals = {}
        with torch.no_grad():
            for module, ab in pairs.items():
                weight = modules[module].weight
                originals[module] = weight.detach().clone()
                delta = ab["B"].to(torch.float32) @ ab["A"].to(torch.float32)
                weight.add_((factor * delta).to(device=weight.device, dtype=weight.dtype))
        self._lora_originals = originals

    def unload_lora_weights(self) -> None:
        """Restores the transformer weights from before `load_lora_weights`."""
        modules = dict(self.transformer.named_modules())
        with torch.no_grad():
            for module, weight in (getattr(self, "_lora_originals", None) or {}).items():
                modules[module].weight.copy_(weight)
        self._lora_originals = None

    @property
    def lora_loaded(self) -> bool:
        """Whether a LoRA is merged into the transformer."""
        return bool(getattr(self, "_lora_originals", None))
