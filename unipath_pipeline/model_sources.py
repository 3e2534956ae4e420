"""Where a pipeline comes from: `preset:NAME`, a saved folder, a Hub repo id, or the bundled default model.

One resolver shared by the CLI, the training scripts, the evaluation suite and the ComfyUI nodes.
"""

from __future__ import annotations

from typing import Optional

import torch

from .pipeline_unipath import UniPathPipeline

PRESET_PREFIX = "preset:"
DEFAULT_SOURCE = "default"


def load_pipeline(model: Optional[str] = None, device: str = "cpu", dtype: str = "float32") -> UniPathPipeline:
    """A `UniPathPipeline` from `preset:NAME`, a saved pipeline folder, a Hub repo id, or (`None` / `"default"`) the
    bundled default model, on `device` in `dtype` ("float32", "bfloat16" or "float16")."""
    torch_dtype = getattr(torch, dtype)
    if model in (None, DEFAULT_SOURCE):
        return UniPathPipeline.from_default(device, torch_dtype)
    if model.startswith(PRESET_PREFIX):
        pipe = UniPathPipeline.from_preset(model[len(PRESET_PREFIX):])
        if torch_dtype != torch.float32:
            pipe = pipe.to(dtype=torch_dtype)
    else:
        pipe = UniPathPipeline.from_pretrained(model, dtype=torch_dtype)
    return pipe.to(device)
